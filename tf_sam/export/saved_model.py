"""SavedModel export with serving signatures that TF Serving runs with no Python of ours.

Signatures (batch of one image; N prompts of P points, both dynamic):
- `embed_image`: `image (H, W, 3) uint8` -> `image_embeddings (1, h, w, C)`,
  `original_size (2,)`, `reshaped_input_size (2,)`.
- `embed_image_bytes`: `image_bytes` (JPEG/PNG string) -> the same.
- `decode`: Meta's ONNX decoder contract — `image_embeddings`, `point_coords (N, P, 2)` in
  ORIGINAL pixels, `point_labels (N, P)` (-1 pads, 2/3 box corners), `mask_input
  (N, 4h, 4w)`, `has_mask_input (N,)`, `original_size (2,)` -> `masks (N, M, H, W) uint8`,
  `iou_scores (N, M)`, `low_res_logits (N, M, 4h, 4w)`.
- `serving_default`: encoded image bytes plus the same prompts -> the decode outputs and
  `masks_png (N, M)` PNG strings for small REST responses.
Pre- and post-processing are `tf_sam.processing.image_ops`, the processor's own functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from tf_sam.processing import image_ops


class SamServingModule(tf.Module):
    """Wraps a `SamModel` (and its image processor settings) as serving functions.

    Args:
        model: a `tf_sam.SamModel`.
        image_processor: a `SamImageProcessor`; by default one following the model's size.
    """

    def __init__(self, model, image_processor=None):
        super().__init__(name="sam_serving")
        from tf_sam.processing import SamImageProcessor

        self.model = model
        processor = image_processor or SamImageProcessor.for_model(model)
        self._longest_edge = processor.size["longest_edge"]
        self._pad = (processor.pad_size["height"], processor.pad_size["width"])
        self._rescale = processor.rescale_factor if processor.do_rescale else 1.0
        self._mean = tuple(processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0)
        self._std = tuple(processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0)
        config = model.config
        self._grid = config.vision_config.image_embedding_size
        self._channels = config.vision_config.output_channels
        self._mask_side = 4 * config.prompt_encoder_config.image_embedding_size

        grid, channels, side = self._grid, self._channels, self._mask_side
        self.embed_image = tf.function(
            self._embed_image, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")]
        )
        self.embed_image_bytes = tf.function(
            self._embed_image_bytes, input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")]
        )
        prompt_specs = [
            tf.TensorSpec([None, None, 2], tf.float32, name="point_coords"),
            tf.TensorSpec([None, None], tf.int32, name="point_labels"),
            tf.TensorSpec([None, side, side], tf.float32, name="mask_input"),
            tf.TensorSpec([None], tf.float32, name="has_mask_input"),
        ]
        self.decode = tf.function(
            self._decode,
            input_signature=[tf.TensorSpec([1, grid, grid, channels], tf.float32, name="image_embeddings")]
            + prompt_specs
            + [tf.TensorSpec([2], tf.int32, name="original_size")],
        )
        self.serving_default = tf.function(
            self._serve, input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")] + prompt_specs
        )

    # ---------------------------------------------------------------- image side
    def _embed_image(self, image):
        """`(H, W, 3) uint8` -> embeddings `(1, h, w, C)` and the sizes the decoder needs."""
        tf.debugging.assert_positive(tf.shape(image)[:2], message="image must have non-zero height and width")
        pixels, reshaped = image_ops.preprocess_image(
            image, self._longest_edge, self._pad, self._rescale, self._mean, self._std
        )
        embeddings = self.model.vision_encoder(pixels[None])
        return {
            "image_embeddings": embeddings,
            "original_size": tf.shape(image)[:2],
            "reshaped_input_size": tf.cast(reshaped, tf.int32),
        }

    def _embed_image_bytes(self, image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return self._embed_image(image)

    # ---------------------------------------------------------------- prompt side
    def _decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, original_size):
        """Meta's ONNX decoder semantics, without control flow; see the module docstring."""
        original_size = tf.cast(original_size, tf.int32)
        reshaped = tf.stack(image_ops.get_preprocess_shape(original_size[0], original_size[1], self._longest_edge))
        coords = tf.cast(image_ops.scale_coordinates(point_coords, original_size, reshaped), tf.float32)
        count = tf.shape(coords)[0]

        prompt_encoder = self.model.prompt_encoder
        # Each prompt is its own "image" so that it can carry its own dense (mask) prompt.
        sparse = prompt_encoder.embed_points(coords[:, None], point_labels[:, None], pad=False)
        has_mask = tf.reshape(tf.cast(has_mask_input, tf.float32), [-1, 1, 1, 1])
        mask_dense = prompt_encoder.mask_embed(mask_input[..., None])
        no_mask = tf.reshape(prompt_encoder.no_mask_embed, [1, 1, 1, -1])
        dense = has_mask * mask_dense + (1.0 - has_mask) * no_mask
        embeddings = tf.broadcast_to(image_embeddings, tf.concat([[count], tf.shape(image_embeddings)[1:]], 0))
        low_res, iou, _ = self.model.mask_decoder(
            embeddings, self.model.get_image_wide_positional_embeddings(), sparse, dense, multimask_output=True
        )
        low_res, iou = low_res[:, 0], iou[:, 0]
        masks = image_ops.postprocess_masks(low_res, original_size, reshaped, self._pad, binarize=True)
        return {"masks": tf.cast(masks, tf.uint8), "iou_scores": iou, "low_res_logits": low_res}

    def _serve(self, image_bytes, point_coords, point_labels, mask_input, has_mask_input):
        embedded = self._embed_image_bytes(image_bytes)
        out = self._decode(
            embedded["image_embeddings"], point_coords, point_labels, mask_input, has_mask_input,
            embedded["original_size"],
        )
        flat = tf.reshape(out["masks"] * 255, tf.concat([[-1], tf.shape(out["masks"])[2:], [1]], 0))
        pngs = tf.map_fn(tf.io.encode_png, flat, fn_output_signature=tf.string)
        out["masks_png"] = tf.reshape(pngs, tf.shape(out["masks"])[:2])
        out["original_size"] = embedded["original_size"]
        return out

    def signatures(self):
        """The concrete functions to export, by signature name."""
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "embed_image": self.embed_image.get_concrete_function(),
            "embed_image_bytes": self.embed_image_bytes.get_concrete_function(),
            "decode": self.decode.get_concrete_function(),
        }


def export_saved_model(model, path, image_processor=None, overwrite=False):
    """Writes a SavedModel for TF Serving at `path` (atomically).

    Args:
        model: a `tf_sam.SamModel`.
        path: output directory; TF Serving expects `<model_dir>/<version>/`.
        image_processor: preprocessing settings (default: follow the model's image size).
        overwrite: replace an existing export at `path`.

    Returns:
        `path`. Raises FileExistsError when `path` exists and `overwrite` is False.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    module = SamServingModule(model, image_processor)
    staging = tempfile.mkdtemp(prefix=".tf-sam-export-", dir=parent)
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
