"""Training mechanics: gradients, custom loops, freezing, LoRA, mixed precision, checkpoints.

Most `fit` calls here use `run_eagerly=True`: tracing the tiny model's training step takes
~25 s on two CPU cores, while a handful of eager steps takes about a second.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_sam
from tests.training.helpers import CONFIG, TrainableSam, fixed_batch, fresh_model, weights_by_path
from tf_sam.training import SamLoss, enable_lora, freeze, sam_loss, trainable_summary


def _dataset(batches=2, **kwargs):
    x, y = fixed_batch(**kwargs)
    return tf.data.Dataset.from_tensors((x, y)).repeat(batches)


def test_gradients_reach_every_trainable_weight():
    """Every prompt path together: clicks (fg, bg, not-a-point), boxes, mask input, 1 and 3 masks."""
    model = fresh_model(seed=0)
    x_masks, y = fixed_batch(masks_input=True)
    x_masks["input_labels"] = np.array([[[1, 0], [1, -1]], [[0, 1], [1, 1]]], np.int32)
    x_boxes, _ = fixed_batch(boxes=True)
    with tf.GradientTape() as tape:
        out_a = model(x_masks, training=True, multimask_output=True)
        out_b = model(x_boxes, training=True, multimask_output=False)
        loss = sam_loss(y["masks"], out_a["pred_masks"], out_a["iou_scores"]) + sam_loss(
            y["masks"], out_b["pred_masks"], out_b["iou_scores"]
        )
        # SAM's min-over-masks rule trains only each prompt's best mask, so a mask token that
        # never wins gets no gradient from it; a small term on every mask checks the wiring.
        loss = loss + 1e-3 * tf.reduce_mean(out_a["pred_masks"])
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [v.path for v, g in zip(model.trainable_weights, grads) if g is None]
    # Embedding-style lookups (relative positions) give IndexedSlices; densify to inspect.
    zero = [v.path for v, g in zip(model.trainable_weights, grads)
            if g is not None and not np.any(tf.convert_to_tensor(g).numpy())]
    assert not missing, missing
    assert not zero, zero
    assert len(model.trainable_weights) > 100


def test_custom_gradient_tape_loop_with_paper_loss():
    model = fresh_model(seed=1)
    loss_fn = SamLoss()  # focal:dice:iou = 20:1:1
    optimizer = keras.optimizers.Adam(3e-3)
    x, y = fixed_batch(seed=2)
    losses = []
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_weights) if g is not None]
        )
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_fit_with_plain_compile_runs_metrics_and_evaluate():
    model = fresh_model(seed=0)
    model.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
    history = model.fit(_dataset(), epochs=2, verbose=0)
    assert set(history.history) == {"loss", "mean_iou"}
    assert np.isfinite(history.history["loss"]).all()
    results = model.evaluate(_dataset(), return_dict=True, verbose=0)
    assert set(results) == {"loss", "mean_iou"} and 0 <= results["mean_iou"] <= 1
    predicted = model.predict(_dataset(1), verbose=0)
    assert predicted["pred_masks"].shape == (2, 2, 3, 32, 32)


def test_freeze_switches_and_frozen_weights_do_not_change():
    model = fresh_model(seed=0)
    freeze(model, encoder=True, prompt_encoder=True)
    summary = trainable_summary(model)
    assert summary["encoder"][0] == 0 and summary["prompt_encoder"][0] == 0 and summary["decoder"][0] > 0
    before = weights_by_path(model)
    model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
    model.fit(_dataset(), epochs=1, verbose=0)
    after = weights_by_path(model)
    for path, value in before.items():
        if path.startswith(("vision_encoder", "prompt_encoder", "shared_image_embedding")):
            np.testing.assert_array_equal(value, after[path], err_msg=path)
    changed = [p for p in before if p.startswith("mask_decoder") and not np.array_equal(before[p], after[p])]
    assert changed
    freeze(model, encoder=False, decoder=True)
    summary = trainable_summary(model)
    assert summary["encoder"][0] == summary["encoder"][1] and summary["decoder"][0] == 0


def test_lora_trains_only_adapters_and_saves_merged(tmp_path):
    model = fresh_model(seed=0)
    adapted = enable_lora(model, rank=2)
    assert len(adapted) == 2 * CONFIG["vision_config"]["num_hidden_layers"]
    encoder_trainable = model.vision_encoder.trainable_weights
    assert encoder_trainable and all("lora" in v.path for v in encoder_trainable)
    before = weights_by_path(model)
    model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
    model.fit(_dataset(), epochs=1, verbose=0)
    after = weights_by_path(model)
    for path in before:
        if path.startswith("vision_encoder") and "lora" not in path:
            np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    assert any("lora_kernel_b" in p and not np.array_equal(before[p], after[p]) for p in before)
    model.save_pretrained(tmp_path)
    plain = tf_sam.SamModel.from_pretrained(tmp_path)
    x, _ = fixed_batch()
    np.testing.assert_allclose(
        plain(x)["pred_masks"].numpy(), model(x)["pred_masks"].numpy(), rtol=1e-4, atol=1e-4
    )


def test_mixed_bfloat16_fit_checkpoint_and_reload(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = fresh_model(seed=0)
        assert model.compute_dtype == "bfloat16"
        model.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        callback = keras.callbacks.ModelCheckpoint(str(tmp_path / "ep{epoch}.weights.h5"), save_weights_only=True)
        history = model.fit(_dataset(), epochs=2, verbose=0, callbacks=[callback])
        assert np.isfinite(history.history["loss"]).all()
        assert all(v.dtype == "float32" for v in model.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert (tmp_path / "ep2.weights.h5").exists()
    restored = TrainableSam(CONFIG)
    restored.load_weights(str(tmp_path / "ep2.weights.h5"))
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model.save_pretrained(tmp_path / "saved")
    reloaded = tf_sam.SamModel.from_pretrained(tmp_path / "saved")
    x, _ = fixed_batch()
    np.testing.assert_allclose(reloaded(x)["iou_scores"].numpy(), restored(x)["iou_scores"].numpy(), rtol=1e-5)
    # ... and the fine-tuned model exports (the decoder half, for speed) and runs.
    from ai_edge_litert.interpreter import Interpreter

    from tf_sam.export import convert_to_tflite

    runner = Interpreter(model_content=convert_to_tflite(reloaded, part="decoder")).get_signature_runner()
    side = 4 * (CONFIG["vision_config"]["image_size"] // CONFIG["vision_config"]["patch_size"])
    embeddings = reloaded.get_image_embeddings(x["pixel_values"][:1]).numpy()
    out = runner(image_embeddings=embeddings, point_coords=np.array([[[20.0, 30.0]]], np.float32),
                 point_labels=np.ones((1, 1), np.float32), mask_input=np.zeros((1, side, side), np.float32),
                 has_mask_input=np.zeros((1,), np.float32), orig_im_size=np.array([64, 64], np.int32))
    assert out["masks"].shape[-2:] == (64, 64) and np.isfinite(out["iou_predictions"]).all()


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash")


def test_backup_and_restore_resumes_interrupted_run(tmp_path):
    backup = str(tmp_path / "backup")
    model = fresh_model(seed=0)
    model.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
    with pytest.raises(KeyboardInterrupt):
        model.fit(_dataset(1), epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), _Interrupt()])
    resumed = fresh_model(seed=5)  # different weights: everything must come from the backup
    resumed.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    resumed.fit(_dataset(1), epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), record])
    assert epochs_run == [2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == 4
