"""`SamTrainingMixin`: what `SamModel` needs for `compile` + `fit` on the TensorFlow backend.

Keras's default loss/metric plumbing expects `y_pred` shaped like `y`; SAM's output is a
dict of `pred_masks (B, P, M, L, L)` and `iou_scores (B, P, M)` scored against targets
`{"masks": (B, P, L, L), "valid": (B, P)}` with the min-over-masks rule, so this mixin
supplies the loss (`compute_loss`), the metrics (`compute_metrics`, `metrics`) and
train/test/predict steps that call the model with the chosen `multimask_output` and hand
Keras plain dicts (the model's `SamImageSegmentationOutput` is a dict subclass that
Keras's tree utilities would treat as an opaque leaf).

`SamModel` inherits it, so `model.compile(optimizer=keras.optimizers.AdamW(1e-4))` and `model.fit(train_ds)` with
datasets from `tf_sam.training.datasets`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_sam.training.losses import sam_loss, scale_loss_for_distribution, unpack_targets
from tf_sam.training.metrics import MaskMeanIoU, select_masks
from tf_sam.training.prompts import sample_error_points

__all__ = ["SamTrainingMixin"]


def _plain(output):
    """The model output as a plain `{"pred_masks", "iou_scores"}` dict."""
    return {"pred_masks": output["pred_masks"], "iou_scores": output["iou_scores"]}


class SamTrainingMixin:
    """Adds SAM's loss, metrics and training steps to a `keras.Model` subclass of SamModel.

    `compile(optimizer, loss=None, metrics=None, *, multimask_output=True, focal_weight=20,
    dice_weight=1, iou_weight=1, iou_on_all_masks=True, focal_alpha=0.25, focal_gamma=2,
    iterative_clicks=0, **kwargs)`:

    * `loss=None` (default) trains with the SAM loss (`tf_sam.training.losses.sam_loss`);
      any other loss goes to Keras unchanged and receives the output dict as `y_pred`.
    * `metrics=None` tracks `MaskMeanIoU` as `mean_iou`; pass a list of metrics whose
      `update_state(y, y_pred_dict)` accepts SAM targets and outputs (e.g. `MaskMeanIoU`
      variants) or `[]` for none.
    * `multimask_output`: train with 3 masks per prompt (min-over-masks) or 1.
    * `iterative_clicks`: SAM's interactive simulation; before the gradient pass the model
      predicts, and a corrective click from the error region is appended to each prompt's
      points, this many times (needs point prompts).
    """

    def compile(self, optimizer="adam", loss=None, metrics=None, *, multimask_output=True, focal_weight=20.0,
                dice_weight=1.0, iou_weight=1.0, iou_on_all_masks=True, focal_alpha=0.25, focal_gamma=2.0,
                iterative_clicks=0, **kwargs):
        self._sam_builtin_loss = loss is None
        self._sam_loss_options = dict(
            focal_weight=focal_weight, dice_weight=dice_weight, iou_weight=iou_weight,
            iou_on_all_masks=iou_on_all_masks, focal_alpha=focal_alpha, focal_gamma=focal_gamma,
        )
        self._sam_multimask = bool(multimask_output)
        self._sam_iterative_clicks = int(iterative_clicks)
        if "weighted_metrics" in kwargs:
            raise ValueError("SAM training does not support weighted_metrics; use `valid` in the targets.")
        # Metric variables must live under the distribution strategy that compile runs in.
        sam_metrics = [MaskMeanIoU(name="mean_iou")] if metrics is None else list(metrics)
        # Bypass Keras's attribute tracking: it refuses new state on a built model, and
        # `metrics` below exposes these to fit/evaluate/reset anyway.
        object.__setattr__(self, "_sam_metrics", sam_metrics)
        super().compile(optimizer=optimizer, loss=loss, metrics=None, **kwargs)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """SAM loss (focal:dice:IoU-MSE = 20:1:1, min over masks) plus any layer losses.

        `y`: `{"masks": (B, P, L, L), "valid": (B, P)}` or the masks tensor. Returns a
        float32 scalar, scaled for the distribution strategy like Keras losses.
        """
        if not getattr(self, "_sam_builtin_loss", False):
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        masks, valid = unpack_targets(y)
        if sample_weight is not None:
            weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1])
            valid = weight if valid is None else tf.cast(valid, tf.float32) * weight
        loss = sam_loss(masks, y_pred["pred_masks"], y_pred["iou_scores"], valid=valid, **self._sam_loss_options)
        loss = scale_loss_for_distribution(loss)
        for extra in self.losses:
            loss = loss + scale_loss_for_distribution(tf.cast(extra, tf.float32))
        return loss

    # --------------------------------------------------------------- metrics
    @property
    def metrics(self):
        return list(super().metrics) + list(getattr(self, "_sam_metrics", []))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the SAM metrics (and the loss tracker's result) and returns all results."""
        for metric in getattr(self, "_sam_metrics", []):
            metric.update_state(y, y_pred)
        return self.get_metrics_result()

    # ----------------------------------------------------------------- steps
    def _sam_forward(self, x, y, training):
        multimask = getattr(self, "_sam_multimask", True)
        clicks = getattr(self, "_sam_iterative_clicks", 0)
        if clicks and y is not None and isinstance(x, dict) and "input_points" in x:
            x = dict(x)
            masks, _ = unpack_targets(y)
            size = self.config.vision_config.image_size
            for _ in range(clicks):
                out = self(x, training=False, multimask_output=multimask)
                current = tf.stop_gradient(select_masks(out["pred_masks"], out["iou_scores"]))
                points, labels = sample_error_points(current, masks, size)
                x["input_points"] = tf.concat([tf.cast(x["input_points"], points.dtype), points], axis=2)
                x["input_labels"] = tf.concat([tf.cast(x["input_labels"], tf.int32), labels], axis=2)
        return x, _plain(self(x, training=training, multimask_output=multimask))

    def train_step(self, data):
        """One optimisation step on `(x, y)` (TensorFlow backend)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            x, y_pred = self._sam_forward(x, y, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(_first_tensor(x))[0])
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        trainable = self.trainable_weights
        if trainable:
            gradients = tape.gradient(loss, trainable)
            self.optimizer.apply_gradients(zip(gradients, trainable))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        """One evaluation step on `(x, y)`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y_pred = self._sam_forward(x, y, training=False)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(_first_tensor(x))[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def predict_step(self, data):
        """`{"pred_masks", "iou_scores"}` for a batch of inputs."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return _plain(self(x, training=False, multimask_output=getattr(self, "_sam_multimask", True)))


def _first_tensor(x):
    if isinstance(x, dict):
        for key in ("pixel_values", "image_embeddings"):
            if x.get(key) is not None:
                return x[key]
        return next(v for v in x.values() if v is not None)
    return x
