"""Shared pieces of the training tests: a trainable tiny model and synthetic data."""

import keras
import numpy as np
import tensorflow as tf

import tf_sam
from tests.conftest import tiny_config_dict

# 64-px input, 8x8 embedding grid, 32x32 low-resolution masks.
CONFIG = tiny_config_dict(image=64, patch=8)


TrainableSam = tf_sam.SamModel


def fresh_model(seed=0, config=None, cls=TrainableSam):
    """An untrained tiny model, reproducible from `seed`."""
    keras.utils.set_random_seed(seed)
    return cls(config or CONFIG)


def fixed_batch(batch=2, prompts=2, points=2, size=64, low=32, seed=0, boxes=False, masks_input=False):
    """A deterministic `(x, y)` batch with one square object per prompt."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(batch, size, size, 3)).astype("float32")
    gt = np.zeros((batch, prompts, low, low), "float32")
    pts = np.zeros((batch, prompts, points, 2), "float32")
    box = np.zeros((batch, prompts, 4), "float32")
    for b in range(batch):
        for p in range(prompts):
            x0, y0 = rng.integers(0, low - 10, size=2)
            gt[b, p, y0:y0 + 8, x0:x0 + 8] = 1
            pixels[b, 2 * y0:2 * y0 + 16, 2 * x0:2 * x0 + 16] += 2.0
            pts[b, p] = [2 * x0 + 8, 2 * y0 + 8]
            box[b, p] = [2 * x0, 2 * y0, 2 * x0 + 15, 2 * y0 + 15]
    x = {"pixel_values": pixels, "input_points": pts, "input_labels": np.ones(pts.shape[:-1], "int32")}
    if boxes:
        x["input_boxes"] = box
    if masks_input:
        x["input_masks"] = rng.normal(size=(batch, low, low)).astype("float32")
    return x, {"masks": gt, "valid": np.ones((batch, prompts), "float32")}


def weights_by_path(model):
    """`{path without the model's own name: value}`, e.g. `mask_decoder/iou_token`."""
    return {v.path.split("/", 1)[1]: np.array(v.numpy()) for v in model.weights}
