"""`SamPredictor`: Meta's interactive API — encode an image once, prompt it many times."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_sam.processing import SamProcessor
from tf_sam.processing import image_ops


def _array(value, name, shape_text, ndim, last=None, dtype=np.float64):
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be numeric with shape {shape_text}.") from None
    if array.ndim != ndim or (last is not None and array.shape[-1] != last):
        raise ValueError(f"`{name}` must have shape {shape_text}, got {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array


class SamPredictor:
    """Computes an image's embedding once and answers prompts for it, like Meta's predictor.

    Args:
        model: a `tf_sam.SamModel`.
        processor: a `SamProcessor`; by default one following the model's input size.

    Example:
        >>> predictor = SamPredictor(model)
        >>> predictor.set_image(photo)                     # (H, W, 3) uint8 / PIL image
        >>> masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])
        >>> masks.shape, scores.shape, logits.shape        # (3, H, W) (3,) (3, 256, 256)
    """

    def __init__(self, model, processor=None):
        self.model = model
        self.processor = processor if processor is not None else SamProcessor.for_model(model)
        # One compiled decoder; prompt counts vary, so let TF generalise shapes instead of
        # retracing per count.
        self._decode = tf.function(self._decode_eager, reduce_retracing=True)
        self._decode_cached = tf.function(self._decode_cached_eager, reduce_retracing=True)
        # The decoder's image-only work (positional encoding, first block's image
        # projections), done once per image: each point/box decode is then 10-14% cheaper.
        self._prepare_decoder = tf.function(self.model.get_decoder_cache)
        # The encoder as one graph too: TF's graph executor frees each intermediate after its
        # last use, which eager Keras calls do not (ViT-B peak RSS 3.1 -> 2.4 GB), and it runs
        # ~10% faster. Every image arrives as (1, S, S, 3), so it traces once.
        self._encode = tf.function(lambda pixel_values: self.model.get_image_embeddings(pixel_values))
        self.reset_image()

    # ------------------------------------------------------------------ image
    def set_image(self, image):
        """Encodes `image` (PIL image or `(H, W, 3)`/`(H, W)` array) and caches the embedding."""
        features = self.processor.image_processor(image, return_tensors="np")
        if len(features["pixel_values"]) != 1:
            raise ValueError(f"set_image takes one image, got {len(features['pixel_values'])}.")
        self._embedding = self._encode(tf.constant(features["pixel_values"], tf.float32))
        self._decoder_cache = self._prepare_decoder(self._embedding)
        self.original_size = tuple(int(v) for v in features["original_sizes"][0])
        self.input_size = tuple(int(v) for v in features["reshaped_input_sizes"][0])

    def reset_image(self):
        """Forgets the cached image and its embedding."""
        self._embedding = None
        self._decoder_cache = None
        self.original_size = None
        self.input_size = None

    @property
    def is_image_set(self):
        return self._embedding is not None

    def get_image_embedding(self):
        """The cached embedding `(1, h, w, C)` (channels-last)."""
        self._require_image()
        return self._embedding

    def _require_image(self):
        if self._embedding is None:
            raise RuntimeError("No image is set: call set_image(image) before prompting.")

    # ---------------------------------------------------------------- prompts
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        """Predicts masks for one prompt on the cached image.

        Args:
            point_coords: `(N, 2)` xy in original-image pixels.
            point_labels: `(N,)` 1 foreground / 0 background (default all 1).
            box: `(4,)` xyxy in original-image pixels.
            mask_input: `(1, 256, 256)` or `(256, 256)` low-res logits from a previous call,
                to refine that mask.
            multimask_output: three candidate masks instead of one.
            return_logits: return upscaled logits instead of booleans.

        Returns:
            `masks (C, H, W)` bool (float32 logits if `return_logits`), `scores (C,)`,
            `low_res_logits (C, 256, 256)`; C = 3 with multimask, else 1.
        """
        coords = _array(point_coords, "point_coords", "(N, 2)", 2, 2)
        labels = _array(point_labels, "point_labels", "(N,)", 1)
        box = _array(box, "box", "(4,)", 1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, np.float32)
            mask_input = mask_input.reshape((1,) + mask_input.shape[-2:]) if mask_input.ndim in (2, 3) else mask_input
        masks, scores, logits = self.predict_batch(
            None if coords is None else coords[None],
            None if labels is None else labels[None],
            None if box is None else box[None],
            mask_input, multimask_output, return_logits,
        )
        return masks[0], scores[0], logits[0]

    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                      multimask_output=True, return_logits=False):
        """Predicts masks for B prompts on the cached image in one decoder call.

        Args:
            point_coords: `(B, N, 2)` xy in original pixels.
            point_labels: `(B, N)` labels (1, 0, -1 not-a-point; default all 1).
            boxes: `(B, 4)` xyxy in original pixels.
            mask_input: `(B, 256, 256)` low-res logits, one per prompt.
            multimask_output, return_logits: as in `predict`.

        Returns:
            `masks (B, C, H, W)`, `scores (B, C)`, `low_res_logits (B, C, 256, 256)`.
        """
        low_res, scores = self.predict_batch_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.upscale_masks(low_res, binarize=not return_logits)
        return masks, scores, low_res

    def upscale_masks(self, low_res_logits, binarize=True):
        """Upscales low-res logits of the cached image to its original size (HF's post-processing).

        Args:
            low_res_logits: `(..., 256, 256)` float logits, e.g. from `predict_batch_low_res`.
            binarize: return `logits > 0` booleans instead of float32 logits.

        Returns:
            `(..., H, W)` numpy array at the original image size.
        """
        self._require_image()
        pad = self.processor.image_processor.pad_size
        return image_ops.postprocess_masks(
            low_res_logits, self.original_size, self.input_size, [pad["height"], pad["width"]],
            binarize=binarize,
        ).numpy()

    def predict_batch_low_res(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                              multimask_output=True):
        """Like `predict_batch`, but stops at the decoder's low-resolution logits.

        Callers that only need some masks at full size (e.g. the automatic mask generator,
        which filters by score first) upscale those with `upscale_masks`, so B x C full-size
        maps never exist at once.

        Returns:
            `low_res_logits (B, C, 256, 256)` float32 numpy, `scores (B, C)`.
        """
        self._require_image()
        coords = _array(point_coords, "point_coords", "(B, N, 2)", 3, 2)
        labels = _array(point_labels, "point_labels", "(B, N)", 2, dtype=np.int64)
        boxes = _array(boxes, "boxes", "(B, 4)", 2, 4)
        if coords is None and boxes is None and mask_input is None:
            raise ValueError("Give at least one prompt: point_coords, boxes/box or mask_input.")
        if labels is not None and coords is None:
            raise ValueError("point_labels were given without point_coords.")
        if coords is not None and labels is None:
            labels = np.ones(coords.shape[:2], np.int64)
        if coords is not None and labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must have shape {coords.shape[:2]} to match point_coords, got {labels.shape}.")
        if coords is not None and boxes is not None and len(coords) != len(boxes):
            raise ValueError(f"Got {len(coords)} point prompts but {len(boxes)} boxes; pair one box per prompt.")
        self._check_in_image(coords, "point_coords")
        self._check_in_image(None if boxes is None else boxes.reshape(-1, 2, 2), "boxes")
        count = len(coords) if coords is not None else len(boxes) if boxes is not None else len(mask_input)

        # The processor owns coordinate scaling, so predictor and processor agree exactly.
        prompts = self.processor(
            original_sizes=[self.original_size],
            input_points=None if coords is None else coords[None],
            input_labels=None if labels is None else labels[None],
            input_boxes=None if boxes is None else boxes[None],
            return_tensors="np",
        )
        points = prompts.get("input_points")
        boxes_in = prompts.get("input_boxes")
        labels_in = None if points is None else labels[None]
        embedding = self._embedding
        masks_in = None
        if mask_input is not None:
            masks_in = np.asarray(mask_input, np.float32)
            if masks_in.ndim == 4 and masks_in.shape[1] == 1:
                masks_in = masks_in[:, 0]
            side = 4 * self.model.config.prompt_encoder_config.image_embedding_size
            if masks_in.shape != (count, side, side):
                raise ValueError(f"mask_input must have shape ({count}, {side}, {side}), got {masks_in.shape}.")
            # A dense prompt is per image in the model, so give each prompt its own copy
            # of the (cached) image embedding: prompts move from point_batch to batch.
            embedding = tf.repeat(embedding, count, axis=0)
            points = None if points is None else points.reshape(count, 1, *points.shape[2:])
            labels_in = None if labels_in is None else labels_in.reshape(count, 1, -1)
            boxes_in = None if boxes_in is None else boxes_in.reshape(count, 1, 4)

        prompt_tensors = (
            None if points is None else tf.constant(points, tf.float32),
            None if labels_in is None else tf.constant(labels_in, tf.int32),
            None if boxes_in is None else tf.constant(boxes_in, tf.float32),
        )
        if masks_in is None:
            low_res, scores = self._decode_cached(self._decoder_cache, *prompt_tensors, bool(multimask_output))
        else:
            low_res, scores = self._decode(embedding, *prompt_tensors, tf.constant(masks_in), bool(multimask_output))
        low_res = tf.reshape(low_res, (count, -1) + tuple(low_res.shape[-2:]))
        scores = tf.reshape(scores, (count, -1))
        return low_res.numpy(), scores.numpy()

    def _decode_eager(self, embedding, points, labels, boxes, masks, multimask_output):
        out = self.model(
            image_embeddings=embedding, input_points=points, input_labels=labels, input_boxes=boxes,
            input_masks=masks, multimask_output=multimask_output,
        )
        return out.pred_masks, out.iou_scores

    def _decode_cached_eager(self, cache, points, labels, boxes, multimask_output):
        out = self.model.decode_with_cache(
            cache, input_points=points, input_labels=labels, input_boxes=boxes, multimask_output=multimask_output,
        )
        return out.pred_masks, out.iou_scores

    def _check_in_image(self, coords, name):
        if coords is None:
            return
        height, width = self.original_size
        x, y = coords[..., 0], coords[..., 1]
        outside = (x < 0) | (x > width) | (y < 0) | (y > height)
        if np.any(outside):
            bad = coords[outside][0]
            raise ValueError(
                f"`{name}` has a point ({bad[0]:g}, {bad[1]:g}) outside the {width}x{height} image "
                "(coordinates are x, y in original pixels)."
            )
