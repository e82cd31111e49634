"""Mask quality metrics: mean IoU of the mask SAM would return for each prompt."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_sam.training.losses import mask_iou, unpack_targets

__all__ = ["MaskMeanIoU", "select_masks", "evaluate_mean_iou"]


def select_masks(pred_masks, iou_scores):
    """The mask the model itself would return: highest predicted IoU per prompt.

    Args:
        pred_masks: `(B, P, M, H, W)` logits.
        iou_scores: `(B, P, M)`.

    Returns:
        `(B, P, H, W)` logits (the input dtype).
    """
    best = tf.argmax(tf.cast(iou_scores, tf.float32), axis=-1, output_type=tf.int32)
    return tf.gather(pred_masks, best, axis=2, batch_dims=2)


@keras.saving.register_keras_serializable(package="tf_sam")
class MaskMeanIoU(keras.metrics.Metric):
    """Mean over prompts of the IoU between the selected predicted mask and the ground truth.

    Unlike `keras.metrics.MeanIoU` (a confusion matrix over all pixels, dominated by large
    objects and background) every prompt counts once, as in SAM's evaluation.

    Args:
        selection: "score" picks the mask with the highest predicted IoU (what inference
            returns); "oracle" the best of the M masks (the paper's oracle metric).
        threshold: logit threshold for binarising predictions.

    `update_state(y_true, y_pred)`: `y_true` a dict with `masks (B, P, H, W)` and optional
    `valid (B, P)` (or the masks tensor); `y_pred` the model output dict, with
    `pred_masks (B, P, M, H, W)` and `iou_scores (B, P, M)`. `result()` is a scalar.
    """

    def __init__(self, selection="score", threshold=0.0, name="mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        if selection not in ("score", "oracle"):
            raise ValueError(f"selection must be 'score' or 'oracle', got {selection!r}.")
        self.selection, self.threshold = selection, threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        masks, valid = unpack_targets(y_true)
        gt = tf.cast(masks, tf.float32)
        pred, scores = y_pred["pred_masks"], y_pred["iou_scores"]
        if self.selection == "oracle":
            ious = tf.reduce_max(mask_iou(pred, gt[:, :, None], self.threshold), axis=-1)
        else:
            ious = mask_iou(select_masks(pred, scores), gt, self.threshold)
        weight = tf.ones_like(ious) if valid is None else tf.cast(valid, tf.float32)
        if sample_weight is not None:
            weight = weight * tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1])
        self.total.assign_add(tf.reduce_sum(ious * weight))
        self.count.assign_add(tf.reduce_sum(weight))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "selection": self.selection, "threshold": self.threshold}


def evaluate_mean_iou(model, dataset, multimask_output=True, selection="score", steps=None):
    """Mean IoU of `model` over a `(x, y)` dataset from `tf_sam.training.datasets`.

    Runs the model in inference mode batch by batch (no `compile` needed).

    Args:
        model: a `SamModel`.
        dataset: yields `(x, y)` with `x` the model's input dict and `y["masks"] (B, P, H, W)`.
        multimask_output: call the model with 3 masks (the score picks one) or 1.
        selection: as in `MaskMeanIoU`.
        steps: stop after this many batches (all when None).

    Returns:
        Python float in [0, 1] (nan for an empty dataset).
    """
    metric = MaskMeanIoU(selection=selection)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        out = model(x, multimask_output=multimask_output, training=False)
        metric.update_state(y, {"pred_masks": out["pred_masks"], "iou_scores": out["iou_scores"]})

    for i, (x, y) in enumerate(dataset):
        if steps is not None and i >= steps:
            break
        step(x, y)
    count = float(metric.count.numpy())
    return float(metric.result().numpy()) if count else float(np.nan)
