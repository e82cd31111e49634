"""Acceptance: fine-tuning a tiny SAM on synthetic shapes improves held-out mean IoU.

The full model trains from random weights; the frozen-encoder runs (API and CLI) start,
as real SAM fine-tuning does, from a pretrained encoder (the full run's) with a newly
initialised decoder. Issue 5 asks for +0.2 held-out mean IoU; the measured gains of this
recipe are in the comments at each bound. Training a random SAM is chaotic: float
differences in threaded kernels send runs with identical seeds and prompts (the pipeline
is seeded) to different optima, so the bounds sit below the worst run measured.

What made +0.2 the usual outcome rather than a lucky one (each measured on several seeds):
160 images rather than 48 (with 38 training images the model reached train IoU 0.45-0.55
but held-out 0.2-0.25), and per-pixel binary cross-entropy beside dice (dice alone left
some runs segmenting every salient shape whatever the click, +0.18 to +0.22). The paper's
focal term (alpha 0.25, weight 20) is tuned for a pretrained SAM: from random weights it
first drives every mask to background; `test_training.py` checks the full 20:1 loss
decreasing.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_sam
from tests.conftest import tiny_config_dict
from tests.training.helpers import fresh_model
from tests.training.synthetic import write_folder_dataset
from tf_sam.training import build_datasets, evaluate_mean_iou, freeze, trainable_summary, warmup_schedule

PROMPTS = dict(num_prompts=4, num_points=1, num_negatives=1, mode="points")
# Binary cross-entropy (the focal term with gamma 0, no class weight) + dice, 1:1, + IoU MSE.
LOSS = dict(focal_weight=1.0, focal_alpha=-1.0, focal_gamma=0.0)
IMAGES = 160  # 128 training (32 steps of 4 per epoch), 32 held out
# The training tests' tiny model with a decoder twice as wide (32): with 16 channels its
# upscaled mask features have 2 channels, and from random weights it learned the clicked
# object in some runs only (48 images, dice: +0.18 to +0.33, against +0.19 to +0.35 at 32).
CONFIG = tiny_config_dict(image=64, patch=8, decoder_hidden=32, decoder_mlp=48)
EPOCHS = 31  # 992 steps: about 2 minutes for the full model
FROZEN_EPOCHS = 25  # 800 steps of the cached decoder: about 1 minute
LEARNING_RATE = 3e-3


def _optimizer(train, epochs=EPOCHS, learning_rate=LEARNING_RATE, warmup_steps=20):
    """AdamW, linear warm-up then cosine decay: a constant rate leaves the final epochs noisy,
    and starting at the peak rate sometimes kills every mask of the random model."""
    steps = epochs * int(train.cardinality().numpy())
    return keras.optimizers.AdamW(warmup_schedule(learning_rate, steps, warmup_steps), weight_decay=1e-4)


def _fit_and_measure(model, train, val, epochs):
    """Fine-tunes with `LOSS`; returns held-out mean IoU before and after, and the losses."""
    before = evaluate_mean_iou(model, val)
    model.compile(_optimizer(train, epochs), **LOSS, jit_compile=False)
    history = model.fit(train, epochs=epochs, verbose=0)
    return before, evaluate_mean_iou(model, val), history.history["loss"]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    images, masks = write_folder_dataset(str(root), IMAGES, seed=1)
    return images, masks


@pytest.fixture(scope="module")
def trained_full_model(shapes_dir):
    """The tiny model fine-tuned end to end, with its held-out IoU before and after and its
    loss history; the frozen-encoder tests reuse its encoder as their pretrained one."""
    images, masks = shapes_dir
    model = fresh_model(seed=0, config=CONFIG)
    train, val, info = build_datasets(
        model.config, images, masks, batch_size=4, validation_split=0.2, seed=0, prompt_options=PROMPTS,
    )
    assert len(info["validation_examples"]) == 32
    return (model, *_fit_and_measure(model, train, val, EPOCHS))


def _with_fresh_decoder(trained, seed=1):
    """A model with `trained`'s image encoder and a newly initialised prompt encoder and decoder:
    the usual starting point of fine-tuning SAM with its encoder frozen."""
    model = fresh_model(seed=seed, config=CONFIG)
    for target, source in zip(model.vision_encoder.weights, trained.vision_encoder.weights, strict=True):
        target.assign(source)
    return model


def test_finetune_full_model_improves_heldout_iou(trained_full_model):
    _, before, after, losses = trained_full_model
    print(f"full model: loss {losses[0]:.4f} -> {losses[-1]:.4f}, held-out mean IoU {before:.4f} -> {after:.4f}")
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    # Issue 5's +0.2. Measured +0.306 (twice), +0.349 (twice), +0.357, +0.373, +0.377,
    # +0.382, +0.406 over model seeds 0-4.
    assert after - before >= 0.2, (before, after)


def test_finetune_frozen_encoder_with_cached_embeddings(shapes_dir, trained_full_model):
    images, masks = shapes_dir
    model = _with_fresh_decoder(trained_full_model[0])
    freeze(model, encoder=True)
    encoder_before = [w.numpy().copy() for w in model.vision_encoder.weights]
    summary = trainable_summary(model)
    assert summary["encoder"][0] == 0 and summary["decoder"][0] == summary["decoder"][1]
    train, val, _ = build_datasets(
        model.config, images, masks, batch_size=4, validation_split=0.2, seed=0, prompt_options=PROMPTS,
        embedding_model=model,
    )
    x, _ = next(iter(train))
    assert "image_embeddings" in x and "pixel_values" not in x
    before, after, losses = _fit_and_measure(model, train, val, FROZEN_EPOCHS)
    print(f"frozen encoder: loss {losses[0]:.4f} -> {losses[-1]:.4f}, held-out mean IoU {before:.4f} -> {after:.4f}")
    for old, new in zip(encoder_before, model.vision_encoder.weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    # Issue 5's +0.2. Measured +0.341, +0.365, +0.372 here; from the other seeds' encoders
    # +0.260 (the weakest, the +0.306 run's), +0.347, +0.389.
    assert after - before >= 0.2, (before, after)


CLI_EPOCHS = 13  # the smaller run: 416 steps


def _run_cli(argv):
    from tf_sam import cli

    assert cli.main(argv) == 0


def test_cli_finetune_frozen_encoder(shapes_dir, trained_full_model, tmp_path, capsys):
    images, masks = shapes_dir
    source = tmp_path / "pretrained_encoder"
    _with_fresh_decoder(trained_full_model[0], seed=2).save_pretrained(source)
    out = tmp_path / "tuned"
    _run_cli([
        "finetune", "--images", images, "--masks", masks, "--checkpoint", str(source), "--output", str(out),
        "--epochs", str(CLI_EPOCHS), "--batch-size", "4", "--freeze-encoder", "--learning-rate", str(LEARNING_RATE),
        "--warmup-steps", "20",
        "--focal-weight", "1", "--focal-alpha", "-1", "--focal-gamma", "0",
        "--prompts", "points", "--num-negatives", "1", "--verbose", "2",
    ])
    printed = capsys.readouterr().out
    assert "mean IoU before:" in printed and "mean IoU after:" in printed
    record = json.loads((out / "finetune.json").read_text())
    before, after = record["mean_iou_before"], record["mean_iou_after"]
    print(f"CLI: held-out mean IoU {before:.4f} -> {after:.4f}")
    assert record["loss"]["focal_alpha"] == -1 and record["loss"]["focal_gamma"] == 0, record["loss"]
    losses = record["history"]["loss"]
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert after - before >= 0.2, (before, after)  # issue 5's +0.2; measured +0.328, +0.347, +0.360
    assert len(os.listdir(out / "checkpoints")) == CLI_EPOCHS
    reloaded = tf_sam.SamModel.from_pretrained(out)
    assert reloaded.count_params() == trained_full_model[0].count_params()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_cli_warmup_ramps_then_follows_the_schedule(schedule):
    import argparse

    from tf_sam.cli_finetune import _learning_rate

    args = argparse.Namespace(epochs=10, warmup_steps=20, schedule=schedule, learning_rate=1e-2)
    rate = _learning_rate(args, tf.data.Dataset.range(10))  # 10 steps per epoch, 100 in all
    values = [float(rate(step)) for step in (0, 10, 20, 60, 99)]
    np.testing.assert_allclose(values[:3], [0.0, 5e-3, 1e-2], rtol=1e-5, atol=1e-9)
    if schedule == "cosine":
        assert 0 < values[3] < 1e-2 and values[4] < 1e-5
    else:
        np.testing.assert_allclose(values[3:], [1e-2, 1e-2], rtol=1e-6)
    no_warmup = warmup_schedule(1e-2, 100, 0, decay=schedule)
    assert float(no_warmup(0)) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="decay"):
        warmup_schedule(1e-2, 100, decay="linear")
