"""SAM's training loss: focal + dice on mask logits and MSE on the predicted IoU.

The SAM paper supervises masks with a 20:1 linear combination of focal and dice loss and
trains the IoU head with the mean-square error between its prediction and the IoU of the
predicted mask with the ground truth. With several output masks per prompt only the
lowest mask loss is back-propagated (the min-over-masks rule), so the model may spread
ambiguous prompts over its outputs instead of averaging them into one blurry mask.

Every function computes in float32, whatever the model's compute dtype: under
`mixed_bfloat16` the logits arrive in bfloat16, whose 8-bit mantissa is too coarse for
sums over 65k pixels.

Shapes: ground-truth masks `(B, P, H, W)` in {0, 1}, predicted mask logits
`(B, P, M, H, W)` (the model's low-resolution `pred_masks`), IoU predictions
`(B, P, M)`; `B` images, `P` prompts per image, `M` masks per prompt.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = [
    "sigmoid_focal_loss", "dice_loss", "mask_iou", "iou_mse_loss", "sam_loss_terms", "sam_loss", "SamLoss",
]


def _f32(x):
    return tf.cast(x, tf.float32)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Focal loss (Lin et al.) averaged over pixels.

    Args:
        logits: `(..., H, W)` mask logits.
        targets: `(..., H, W)` ground truth in {0, 1}, broadcastable to `logits`.
        alpha: weight of the positive class (negatives get `1 - alpha`); negative disables it.
        gamma: focusing exponent.

    Returns:
        `(...)` float32: the per-mask mean over its `H * W` pixels.
    """
    logits, targets = _f32(logits), _f32(targets)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.broadcast_to(targets, tf.shape(logits)), logits=logits)
    loss = ce
    if gamma != 0:
        # 1 - p_t from sigmoid(-x) rather than 1 - sigmoid(x): no cancellation near p = 1.
        # The floor keeps pow's gradient finite (gamma < 1 divides by 1 - p_t) where a
        # pixel is saturated and right; there it has no gradient anyway.
        miss = tf.sigmoid(logits) * (1.0 - targets) + tf.sigmoid(-logits) * targets
        loss = ce * tf.pow(tf.maximum(miss, 1e-12), gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return tf.reduce_mean(loss, axis=[-2, -1])


def dice_loss(logits, targets, smooth=1.0):
    """Soft dice loss `1 - (2|p t| + s) / (|p| + |t| + s)` on sigmoid probabilities.

    Args:
        logits: `(..., H, W)` mask logits.
        targets: `(..., H, W)` ground truth in {0, 1}, broadcastable to `logits`.
        smooth: additive smoothing; keeps the loss defined (0) for an empty mask predicted empty.

    Returns:
        `(...)` float32 in [0, 1].
    """
    prob = tf.sigmoid(_f32(logits))
    targets = _f32(targets)
    inter = tf.reduce_sum(prob * targets, axis=[-2, -1])
    total = tf.reduce_sum(prob, axis=[-2, -1]) + tf.reduce_sum(targets * tf.ones_like(prob), axis=[-2, -1])
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def mask_iou(logits, targets, threshold=0.0):
    """IoU of the binarised prediction (`logits > threshold`) with the ground truth.

    Not differentiable (it is a target for the IoU head and a metric). An empty
    prediction of an empty target counts as IoU 1.

    Args:
        logits: `(..., H, W)` mask logits.
        targets: `(..., H, W)` ground truth in {0, 1}, broadcastable to `logits`.
        threshold: logit threshold (0 is probability 0.5, as at inference).

    Returns:
        `(...)` float32 in [0, 1].
    """
    pred = _f32(_f32(logits) > threshold)
    targets = _f32(targets) * tf.ones_like(pred)
    inter = tf.reduce_sum(pred * targets, axis=[-2, -1])
    union = tf.reduce_sum(tf.maximum(pred, targets), axis=[-2, -1])
    return tf.stop_gradient(tf.where(union > 0, inter / tf.maximum(union, 1.0), tf.ones_like(union)))


def iou_mse_loss(iou_predictions, logits, targets):
    """Squared error between the IoU head's prediction and the mask's actual IoU.

    Args:
        iou_predictions: `(...)` the model's `iou_scores`.
        logits: `(..., H, W)` the corresponding mask logits.
        targets: `(..., H, W)` ground truth, broadcastable to `logits`.

    Returns:
        `(...)` float32.
    """
    return tf.square(_f32(iou_predictions) - mask_iou(logits, targets))


def sam_loss_terms(gt_masks, pred_masks, iou_scores, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0,
                   focal_alpha=0.25, focal_gamma=2.0, iou_on_all_masks=True):
    """Per-prompt SAM loss with the min-over-masks rule.

    Args:
        gt_masks: `(B, P, H, W)` ground truth in {0, 1} at the low-resolution mask size.
        pred_masks: `(B, P, M, H, W)` mask logits.
        iou_scores: `(B, P, M)` predicted IoUs.
        focal_weight, dice_weight, iou_weight: the paper's 20 : 1 : 1.
        focal_alpha, focal_gamma: focal loss parameters.
        iou_on_all_masks: train the IoU head on every output mask (True), not only on the
            selected one; at inference the head ranks all M masks, so it must score the
            losers too.

    Returns:
        dict of `(B, P)` float32 tensors: `loss` (the total), `focal`, `dice`, `iou_mse`
        (of the selected mask, or averaged over masks with `iou_on_all_masks`), `best`
        (int32 index of the selected mask) and `iou` (actual IoU of the selected mask).
    """
    gt = _f32(gt_masks)[:, :, None]  # broadcast over the M masks
    focal = sigmoid_focal_loss(pred_masks, gt, focal_alpha, focal_gamma)  # (B, P, M)
    dice = dice_loss(pred_masks, gt)
    mask_loss = focal_weight * focal + dice_weight * dice
    # Only the best of the M masks is supervised; argmin has no gradient, the gather does.
    best = tf.argmin(mask_loss, axis=-1, output_type=tf.int32)
    pick = lambda t: tf.gather(t, best, axis=-1, batch_dims=2)
    actual_iou = mask_iou(pred_masks, gt)
    iou_err = tf.square(_f32(iou_scores) - actual_iou)
    iou_term = tf.reduce_mean(iou_err, axis=-1) if iou_on_all_masks else pick(iou_err)
    total = pick(mask_loss) + iou_weight * iou_term
    return {
        "loss": total, "focal": pick(focal), "dice": pick(dice), "iou_mse": iou_term, "best": best,
        "iou": pick(actual_iou),
    }


def sam_loss(gt_masks, pred_masks, iou_scores, valid=None, **kwargs):
    """Scalar SAM loss: `sam_loss_terms(...)["loss"]` averaged over prompts.

    Args:
        gt_masks, pred_masks, iou_scores: as in `sam_loss_terms`.
        valid: optional `(B, P)` weights (0 marks a padding prompt).
        **kwargs: forwarded to `sam_loss_terms`.

    Returns:
        float32 scalar. The sum over prompts is divided by the number of prompt slots
        `B * P`, not by the number of valid ones: that keeps the per-replica losses of a
        `MirroredStrategy` adding up to exactly the single-device loss of the global batch.
    """
    per_prompt = sam_loss_terms(gt_masks, pred_masks, iou_scores, **kwargs)["loss"]
    if valid is not None:
        per_prompt = per_prompt * _f32(valid)
    return tf.reduce_mean(per_prompt)


@keras.saving.register_keras_serializable(package="tf_sam")
class SamLoss(keras.losses.Loss):
    """SAM loss as a Keras loss for custom loops: `loss(y_true, y_pred)`.

    `y_true` is a dict with `masks (B, P, H, W)` and optionally `valid (B, P)`, or the
    masks tensor itself; `y_pred` is the model output (`pred_masks`, `iou_scores`).
    Returns a float32 scalar, already divided by the number of replicas under a
    distribution strategy (as Keras losses are).
    """

    def __init__(self, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0, iou_on_all_masks=True,
                 name="sam_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.focal_weight, self.dice_weight, self.iou_weight = focal_weight, dice_weight, iou_weight
        self.iou_on_all_masks = iou_on_all_masks

    def __call__(self, y_true, y_pred, sample_weight=None):
        masks, valid = unpack_targets(y_true)
        loss = sam_loss(
            masks, y_pred["pred_masks"], y_pred["iou_scores"], valid=valid, focal_weight=self.focal_weight,
            dice_weight=self.dice_weight, iou_weight=self.iou_weight, iou_on_all_masks=self.iou_on_all_masks,
        )
        return scale_loss_for_distribution(loss)

    def call(self, y_true, y_pred):  # pragma: no cover - __call__ does the work
        raise NotImplementedError

    def get_config(self):
        return {
            "name": self.name, "focal_weight": self.focal_weight, "dice_weight": self.dice_weight,
            "iou_weight": self.iou_weight, "iou_on_all_masks": self.iou_on_all_masks,
        }


def unpack_targets(y):
    """`(masks (B, P, H, W), valid (B, P) or None)` from a target dict or a masks tensor."""
    if isinstance(y, dict):
        if "masks" not in y:
            raise ValueError(f"SAM targets must hold `masks` (B, P, H, W); got keys {sorted(y)}.")
        return y["masks"], y.get("valid")
    return y, None


def scale_loss_for_distribution(loss):
    """Divides a per-replica mean loss by the replica count, so summed gradients average.

    Outside a replica context (no strategy, or one device) the loss is unchanged.
    """
    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1 and tf.distribute.in_cross_replica_context() is False:
        loss = loss * (1.0 / replicas)
    return loss
