"""Prompt sampling from ground-truth instance masks, as graph ops inside `tf.data`.

SAM is trained by simulating a user: for each object it gets a few clicks on the object
(and optionally on the background), or a loosely drawn box, and must return the object's
mask. `PromptSampler` turns one preprocessed image and its instance label map into such
prompts plus the low-resolution target masks; it is a plain function of tensors, so it
runs in `Dataset.map` with a fresh draw every epoch.

Every random helper takes an optional stateless `seed` (`(2,)` int): given one, the draw is
a pure function of it, so a parallel `map` gives the same prompts run after run (stateful
random ops there draw in whatever order the threads happen to run). `prompt_dataset` feeds
each element its own seed from `Dataset.random`.

Coordinates are in the model's input frame: pixels of the resized image inside the
`S x S` padded input (`S = vision_config.image_size`), `(x, y)` order, boxes `xyxy`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

__all__ = ["PromptSampler", "masks_from_label_map", "boxes_from_masks", "sample_points", "sample_error_points",
           "downsample_masks", "PAD_LABEL"]

PAD_LABEL = -10  # HF's padding label: the point's embedding is zeroed
_MODES = ("points", "box", "points+box", "mixed")


def _uniform(shape, seed, minval=0.0, maxval=1.0):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval)
    return tf.random.stateless_uniform(shape, seed, minval, maxval)


def _normal(shape, seed):
    return tf.random.normal(shape) if seed is None else tf.random.stateless_normal(shape, seed)


def _split(seed, count):
    """`count` independent stateless seeds from one (`None`s when `seed` is None)."""
    if seed is None:
        return [None] * count
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count))


def masks_from_label_map(label_map, num_prompts, seed=None):
    """Picks up to `num_prompts` instances of a label map at random.

    Args:
        label_map: `(S, S)` int32: instance id per pixel, 0 background, -1 padding.
        num_prompts: P, a Python int.
        seed: optional `(2,)` int stateless seed.

    Returns:
        `(masks (P, S, S) bool, valid (P,) float32)`. With fewer than P instances the chosen
        ones repeat (each copy gets its own prompt draw, a cheap augmentation); with none,
        all masks are empty and `valid` is 0.
    """
    ids, _ = tf.unique(tf.reshape(label_map, [-1]))
    ids = tf.boolean_mask(ids, ids > 0)
    ids = tf.random.shuffle(ids) if seed is None else tf.random.experimental.stateless_shuffle(ids, seed)
    count = tf.size(ids)
    index = tf.math.floormod(tf.range(num_prompts), tf.maximum(count, 1))
    chosen = tf.gather(tf.concat([ids, [0]], axis=0), index)
    has_any = count > 0
    masks = tf.logical_and(tf.equal(label_map[None], chosen[:, None, None]), has_any)
    valid = tf.fill([num_prompts], tf.cast(has_any, tf.float32))
    return masks, valid


def sample_points(region, num_points, seed=None):
    """Distinct random pixels of each region, uniformly (Gumbel top-k).

    Args:
        region: `(P, H, W)` bool.
        num_points: K, a Python int.
        seed: optional `(2,)` int stateless seed.

    Returns:
        `(points (P, K, 2) float32 xy, found (P, K) bool)`; `found` is False where a region
        has fewer than K pixels (those points are meaningless and must be padded out).
    """
    shape = tf.shape(region)
    width = shape[2]
    flat = tf.reshape(region, [shape[0], -1])
    noise = -tf.math.log(-tf.math.log(_uniform(tf.shape(flat), seed, 1e-7, 1.0)))
    scores = tf.where(flat, noise, tf.fill(tf.shape(noise), float("-inf")))
    values, index = tf.math.top_k(scores, k=num_points)
    xy = tf.stack([index % width, index // width], axis=-1)
    return tf.cast(xy, tf.float32), values > float("-inf")


def boxes_from_masks(masks, jitter=0.0, max_jitter=None, image_hw=None, seed=None):
    """Tight `xyxy` boxes of masks, optionally jittered like the SAM paper.

    Args:
        masks: `(P, H, W)` bool.
        jitter: std of the Gaussian noise on each coordinate, as a fraction of the box side
            (the paper's 0.1).
        max_jitter: cap on the noise in pixels (the paper's 20 px at 1024).
        image_hw: `(2,)` int extent `[h, w]` the jittered box is clipped to (the resized
            image inside the padding); the full mask size when None.
        seed: optional `(2,)` int stateless seed for the jitter.

    Returns:
        `(P, 4)` float32 boxes; all zeros for an empty mask.
    """
    shape = tf.shape(masks)
    rows = tf.reduce_any(masks, axis=2)
    cols = tf.reduce_any(masks, axis=1)

    def extent(any_along, size):
        first = tf.argmax(tf.cast(any_along, tf.int32), axis=1, output_type=tf.int32)
        last = size - 1 - tf.argmax(tf.cast(tf.reverse(any_along, [1]), tf.int32), axis=1, output_type=tf.int32)
        return tf.cast(first, tf.float32), tf.cast(last, tf.float32)

    y0, y1 = extent(rows, shape[1])
    x0, x1 = extent(cols, shape[2])
    boxes = tf.stack([x0, y0, x1, y1], axis=-1)
    if jitter:
        side = tf.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0], axis=-1) + 1.0
        noise = _normal(tf.shape(boxes), seed) * jitter * side
        if max_jitter is not None:
            noise = tf.clip_by_value(noise, -float(max_jitter), float(max_jitter))
        boxes = boxes + noise
        hw = tf.cast(shape[1:3] if image_hw is None else image_hw, tf.float32)
        limit = tf.stack([hw[1], hw[0], hw[1], hw[0]]) - 1.0
        boxes = tf.clip_by_value(boxes, 0.0, limit)
        # Keep corners ordered after noise so the box stays a box.
        boxes = tf.concat([tf.minimum(boxes[:, :2], boxes[:, 2:]), tf.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    empty = tf.logical_not(tf.reduce_any(rows, axis=1))
    return tf.where(empty[:, None], tf.zeros_like(boxes), boxes)


def downsample_masks(masks, size):
    """Ground truth at the model's low-resolution mask size: area average, then > 0.5.

    Args:
        masks: `(P, S, S)` bool (or {0,1}) in the padded input frame.
        size: the low-resolution side L (`4 * S / patch_size`).

    Returns:
        `(P, L, L)` float32 in {0, 1}.
    """
    resized = tf.image.resize(tf.cast(masks, tf.float32)[..., None], (size, size), method="area")[..., 0]
    return tf.cast(resized > 0.5, tf.float32)


def sample_error_points(pred_logits, gt_masks, image_size, threshold=0.0):
    """Iterative-click simulation: one corrective click per prompt from the error region.

    As in SAM's training, the next click is drawn uniformly from the pixels the current
    prediction gets wrong: a positive click on a missed pixel, a negative one on a false
    positive.

    Args:
        pred_logits: `(B, P, L, L)` low-resolution mask logits.
        gt_masks: `(B, P, L, L)` ground truth in {0, 1}.
        image_size: S, the input frame side (clicks are returned in that frame).
        threshold: logit threshold.

    Returns:
        `(points (B, P, 1, 2) float32, labels (B, P, 1) int32)`; label -10 (padding) where
        the prediction is already perfect.
    """
    shape = tf.shape(gt_masks)
    pred = tf.cast(pred_logits, tf.float32) > threshold
    gt = tf.cast(gt_masks, tf.float32) > 0.5
    error = tf.not_equal(pred, gt)
    flat = tf.reshape(error, [shape[0] * shape[1], shape[2], shape[3]])
    xy, found = sample_points(flat, 1)
    cell = tf.cast(image_size, tf.float32) / tf.cast(shape[3], tf.float32)
    # Centre of the low-res cell, in the input frame.
    points = xy * cell + (cell - 1.0) / 2.0
    index = tf.cast(xy[:, 0, 1], tf.int32) * shape[3] + tf.cast(xy[:, 0, 0], tf.int32)
    missed = tf.gather(tf.reshape(gt, [shape[0] * shape[1], -1]), index, batch_dims=1)
    labels = tf.where(found[:, 0], tf.cast(missed, tf.int32), PAD_LABEL)
    return (tf.reshape(points, [shape[0], shape[1], 1, 2]),
            tf.reshape(labels, [shape[0], shape[1], 1]))


@dataclasses.dataclass
class PromptSampler:
    """Turns `{"pixel_values" | "image_embeddings", "label_map"}` into `(x, y)` for `fit`.

    Args:
        image_size: S, the model input side (`vision_config.image_size`).
        mask_size: L, the low-resolution mask side (`4 * image_size / patch_size`).
        num_prompts: P objects per image per step.
        num_points: positive clicks per object.
        num_negatives: background clicks per object (outside the object, inside the image).
        mode: "points", "box", "points+box" (both in every prompt) or "mixed" (each prompt is
            either its clicks or its box, half and half, the box given as two corner points
            with labels 2 and 3 so that one tensor layout serves both).
        box_jitter: box noise std as a fraction of the box side (SAM: 0.1).
        max_box_jitter: cap in pixels of the input frame (SAM: 20 px at 1024, so the default
            scales it with S).

    Calling it on one unbatched element returns `(x, y)`: `x` holds the image entry plus
    `input_points (P, N, 2)` / `input_labels (P, N)` and/or `input_boxes (P, 4)`; `y` holds
    `masks (P, L, L)` float32 and `valid (P,)` float32. An element's optional `seed`
    (`(2,)` int) makes the draw a pure function of it.
    """

    image_size: int
    mask_size: int
    num_prompts: int = 4
    num_points: int = 1
    num_negatives: int = 0
    mode: str = "points"
    box_jitter: float = 0.1
    max_box_jitter: float | None = None

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"prompt mode must be one of {_MODES}, got {self.mode!r}.")
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {self.num_prompts}.")
        if self.mode != "box" and self.num_points + self.num_negatives < 1:
            raise ValueError("point prompts need num_points + num_negatives >= 1.")
        if self.max_box_jitter is None:
            self.max_box_jitter = 20.0 * self.image_size / 1024.0

    @property
    def points_per_prompt(self):
        """N, the point count of `input_points` (0 in box mode)."""
        if self.mode == "box":
            return 0
        n = self.num_points + self.num_negatives
        return max(n, 2) if self.mode == "mixed" else n

    def __call__(self, element):
        label_map = tf.convert_to_tensor(element["label_map"])
        pick_seed, box_seed, point_seed, mix_seed = _split(element.get("seed"), 4)
        masks, valid = masks_from_label_map(label_map, self.num_prompts, pick_seed)
        x = {k: v for k, v in element.items() if k in ("pixel_values", "image_embeddings")}
        image_region = label_map >= 0
        # The resized image's extent inside the padding, for clipping jittered boxes.
        image_hw = tf.stack([
            tf.reduce_sum(tf.cast(tf.reduce_any(image_region, axis=1), tf.int32)),
            tf.reduce_sum(tf.cast(tf.reduce_any(image_region, axis=0), tf.int32)),
        ])
        if self.mode in ("box", "points+box", "mixed"):
            boxes = boxes_from_masks(masks, self.box_jitter, self.max_box_jitter, image_hw, box_seed)
        if self.mode != "box":
            points, labels = self._points(masks, image_region, point_seed)
        if self.mode in ("points", "points+box"):
            x["input_points"], x["input_labels"] = points, labels
        if self.mode in ("box", "points+box"):
            x["input_boxes"] = boxes
        if self.mode == "mixed":
            n = self.points_per_prompt
            corners = tf.reshape(boxes, [self.num_prompts, 2, 2])
            box_points = tf.concat([corners, tf.zeros([self.num_prompts, n - 2, 2])], axis=1)
            box_labels = tf.concat(
                [tf.tile([[2, 3]], [self.num_prompts, 1]), tf.fill([self.num_prompts, n - 2], PAD_LABEL)], axis=1
            )
            use_box = _uniform([self.num_prompts], mix_seed) < 0.5
            x["input_points"] = tf.where(use_box[:, None, None], box_points, points)
            x["input_labels"] = tf.where(use_box[:, None], box_labels, labels)
        y = {"masks": downsample_masks(masks, self.mask_size), "valid": valid}
        return x, y

    def _points(self, masks, image_region, seed=None):
        parts, label_parts = [], []
        pos_seed, neg_seed = _split(seed, 2)
        if self.num_points:
            pos, found = sample_points(masks, self.num_points, pos_seed)
            parts.append(pos)
            label_parts.append(tf.where(found, 1, PAD_LABEL))
        if self.num_negatives:
            background = tf.logical_and(image_region[None], tf.logical_not(masks))
            neg, found = sample_points(background, self.num_negatives, neg_seed)
            parts.append(neg)
            label_parts.append(tf.where(found, 0, PAD_LABEL))
        points = tf.concat(parts, axis=1)
        labels = tf.concat(label_parts, axis=1)
        extra = self.points_per_prompt - (self.num_points + self.num_negatives)
        if extra > 0:  # mixed mode needs room for two box corners
            points = tf.concat([points, tf.zeros([self.num_prompts, extra, 2])], axis=1)
            labels = tf.concat([labels, tf.fill([self.num_prompts, extra], PAD_LABEL)], axis=1)
        # Padded points sit at (0, 0); their embedding is zeroed anyway.
        points = tf.where((labels == PAD_LABEL)[..., None], tf.zeros_like(points), points)
        return points, tf.cast(labels, tf.int32)
