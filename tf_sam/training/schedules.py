"""Learning-rate schedules for fine-tuning SAM."""

import keras

__all__ = ["warmup_schedule"]


def warmup_schedule(peak, total_steps, warmup_steps=0, decay="cosine"):
    """Linear warm-up from 0 to `peak`, then cosine decay to 0 or a constant `peak`.

    SAM was trained with 250 warm-up steps; a newly initialised decoder that takes the peak
    rate from its first step can collapse to one mask. Decaying to 0 settles the last
    epochs, which a constant rate leaves noisy.

    Args:
        peak: the learning rate after warm-up.
        total_steps: optimizer steps in the whole run (warm-up included).
        warmup_steps: length of the ramp; clipped to `total_steps - 1`.
        decay: "cosine" or "constant".

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule` (step -> scalar rate).
    """
    if decay not in ("cosine", "constant"):
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}.")
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(int(warmup_steps), 0), total_steps - 1)
    # With warmup_target set, CosineDecay ramps 0 -> peak, then decays from peak towards
    # alpha * peak: alpha 1 keeps it constant.
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha=1.0 if decay == "constant" else 0.0,
        warmup_target=peak, warmup_steps=warmup_steps,
    )
