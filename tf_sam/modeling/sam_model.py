"""`SamModel`: SAM's three parts composed behind Hugging Face's call interface."""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

from tf_sam.config import SamConfig
from tf_sam.modeling.image_encoder import SamVisionEncoder
from tf_sam.modeling.mask_decoder import SamMaskDecoder
from tf_sam.modeling.prompt_encoder import SamPositionalEmbedding, SamPromptEncoder
from tf_sam.training.model_mixin import SamTrainingMixin


class SamImageSegmentationOutput(dict):
    """Model output: a dict with attribute access, holding only the fields produced.

    Fields: `iou_scores (B, P, M)`, `pred_masks (B, P, M, 4h, 4w)` low-resolution mask
    logits, and when asked `vision_hidden_states`, `vision_attentions`,
    `mask_decoder_attentions`, `image_embeddings (B, h, w, C)`.
    """

    _fields = (
        "iou_scores", "pred_masks", "vision_hidden_states", "vision_attentions",
        "mask_decoder_attentions", "image_embeddings",
    )

    def __getattr__(self, name):
        if name in self:
            return self[name]
        if name in self._fields:
            return None
        raise AttributeError(name)

    def to_tuple(self):
        """The present fields in HF's order."""
        return tuple(self[k] for k in self._fields if k in self)


def _shape_str(x):
    return "(" + ", ".join("None" if d is None else str(d) for d in x.shape) + ")"


def _as_tensor(name, value, dtype):
    if value is None:
        return None
    try:
        tensor = ops.convert_to_tensor(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"`{name}` could not be converted to a tensor: {e}") from None
    if dtype == "int32":
        if "float" in str(tensor.dtype) and not keras.backend.is_keras_tensor(tensor):
            array = np.asarray(tensor)
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"`{name}` must hold integer labels, got non-integer values.")
        return ops.cast(tensor, "int32")
    return ops.cast(tensor, dtype) if tensor.dtype != dtype else tensor


@keras.saving.register_keras_serializable(package="tf_sam")
class SamModel(SamTrainingMixin, keras.Model):
    """Segment Anything: image encoder, prompt encoder and mask decoder.

    Args:
        config: `SamConfig` (or its dict); `SamConfig.from_preset("sam-vit-base")` for SAM-B.

    Call (all keyword; mirrors HF's `SamModel.forward`, channels-last):
        pixel_values: `(B, S, S, 3)` normalised images, `S = vision_config.image_size`.
        input_points: `(B, P, N, 2)` xy in the `S x S` input frame.
        input_labels: `(B, P, N)` int: 1 fg, 0 bg, -1 not-a-point, -10 padding;
            ones when omitted.
        input_boxes: `(B, P, 4)` xyxy in the input frame.
        input_masks: `(B, 4h, 4w)` mask logits (`4h = 256` for SAM).
        image_embeddings: `(B, h, w, C)` from `get_image_embeddings`; replaces `pixel_values`.
        multimask_output: 3 masks per prompt (True) or the single best-guess mask.
        output_attentions, output_hidden_states: also return encoder internals.
        attention_similarity, target_embedding: PerSAM personalisation inputs.
    Returns: `SamImageSegmentationOutput` with `iou_scores (B, P, M)` and
    `pred_masks (B, P, M, 4h, 4w)`, M = 3 with multimask else 1.

    Example:
        >>> import numpy as np, tf_sam
        >>> model = tf_sam.SamModel(tf_sam.SamConfig.from_preset("sam-vit-base"))
        >>> out = model(pixel_values=np.zeros((1, 1024, 1024, 3), "float32"),
        ...             input_points=[[[[500.0, 375.0]]]])
        >>> out.pred_masks.shape
        TensorShape([1, 1, 3, 256, 256])
    """

    def __init__(self, config: SamConfig | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = SamConfig()
        elif isinstance(config, dict):
            config = SamConfig.from_dict(config)
        self.config = config
        self.shared_image_embedding = SamPositionalEmbedding(
            config.vision_config.num_pos_feats, name="shared_image_embedding"
        )
        self.vision_encoder = SamVisionEncoder(config.vision_config, name="vision_encoder")
        self.prompt_encoder = SamPromptEncoder(
            config.prompt_encoder_config, self.shared_image_embedding, name="prompt_encoder"
        )
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config, name="mask_decoder")
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.shared_image_embedding.build()
        self.vision_encoder.build()
        self.prompt_encoder.build()
        self.mask_decoder.build()
        self.built = True

    # ----------------------------------------------------------------- validation
    def _check_pixel_values(self, pixel_values):
        size = self.config.vision_config.image_size
        channels = self.config.vision_config.num_channels
        expected = f"(batch, {size}, {size}, {channels})"
        shape = pixel_values.shape
        if len(shape) != 4:
            raise ValueError(
                f"`pixel_values` must have rank 4 {expected}, got shape {_shape_str(pixel_values)}."
            )
        if shape[-1] != channels:
            hint = " It looks channels-first; transpose to channels-last." if shape[1] == channels else ""
            raise ValueError(
                f"`pixel_values` must be channels-last {expected}, got shape {_shape_str(pixel_values)}.{hint}"
            )
        if (shape[1] is not None and shape[1] != size) or (shape[2] is not None and shape[2] != size):
            raise ValueError(
                f"`pixel_values` must be {expected} (resize and pad with SamImageProcessor), "
                f"got shape {_shape_str(pixel_values)}."
            )

    def _check_image_embeddings(self, image_embeddings):
        grid = self.config.vision_config.image_embedding_size
        channels = self.config.vision_config.output_channels
        expected = f"(batch, {grid}, {grid}, {channels})"
        shape = image_embeddings.shape
        if len(shape) != 4 or tuple(shape[1:]) != (grid, grid, channels):
            hint = ""
            if len(shape) == 4 and tuple(shape[1:]) == (channels, grid, grid):
                hint = " It looks channels-first (HF layout); transpose to (batch, h, w, C)."
            raise ValueError(
                f"`image_embeddings` must have shape {expected}, got {_shape_str(image_embeddings)}.{hint}"
            )

    @staticmethod
    def _check_rank(name, tensor, rank, expected):
        if tensor is not None and len(tensor.shape) != rank:
            raise ValueError(f"`{name}` must have shape {expected}, got {_shape_str(tensor)}.")

    def _prepare_prompts(self, input_points, input_labels, input_boxes, input_masks):
        points = _as_tensor("input_points", input_points, self.compute_dtype)
        labels = _as_tensor("input_labels", input_labels, "int32")
        boxes = _as_tensor("input_boxes", input_boxes, self.compute_dtype)
        masks = _as_tensor("input_masks", input_masks, self.compute_dtype)
        self._check_rank("input_points", points, 4, "(batch, point_batch, num_points, 2)")
        if points is not None and points.shape[-1] != 2:
            raise ValueError(
                f"`input_points` must have shape (batch, point_batch, num_points, 2), got {_shape_str(points)}."
            )
        if labels is not None and points is None:
            raise ValueError("`input_labels` was given without `input_points`.")
        if points is not None and labels is None:
            labels = ops.ones(ops.shape(points)[:-1], dtype="int32")
        self._check_rank("input_labels", labels, 3, "(batch, point_batch, num_points)")
        if points is not None and tuple(labels.shape) != tuple(points.shape[:-1]):
            raise ValueError(
                f"`input_labels` must have shape {_shape_str(points)[:-4]}) matching `input_points` "
                f"{_shape_str(points)}, got {_shape_str(labels)}."
            )
        self._check_rank("input_boxes", boxes, 3, "(batch, num_boxes, 4)")
        if boxes is not None and boxes.shape[-1] != 4:
            raise ValueError(f"`input_boxes` must have shape (batch, num_boxes, 4) xyxy, got {_shape_str(boxes)}.")
        if points is not None and boxes is not None and None not in (points.shape[1], boxes.shape[1]):
            if points.shape[1] != boxes.shape[1]:
                raise ValueError(
                    f"`input_points` point_batch ({points.shape[1]}) must equal `input_boxes` num_boxes "
                    f"({boxes.shape[1]}): each box pairs with one group of points."
                )
        if masks is not None:
            side = 4 * self.config.prompt_encoder_config.image_embedding_size
            expected = f"(batch, {side}, {side})"
            if len(masks.shape) == 4 and masks.shape[-1] == 1:
                masks = masks[..., 0]
            if len(masks.shape) != 3 or tuple(masks.shape[1:]) != (side, side):
                raise ValueError(f"`input_masks` must have shape {expected}, got {_shape_str(masks)}.")
        return points, labels, boxes, masks

    @staticmethod
    def _check_batch(image_batch, **tensors):
        if image_batch is None:
            return
        for name, tensor in tensors.items():
            if tensor is not None and tensor.shape[0] is not None and tensor.shape[0] != image_batch:
                raise ValueError(
                    f"`{name}` has batch size {tensor.shape[0]} (shape {_shape_str(tensor)}) but the images "
                    f"have batch size {image_batch}; give one entry per image."
                )

    # ------------------------------------------------------------------- parts
    def get_image_wide_positional_embeddings(self):
        """Positional encoding of the embedding grid: `(h, w, C)`."""
        return self.shared_image_embedding.image_wide(self.config.prompt_encoder_config.image_embedding_size)

    def get_image_embeddings(self, pixel_values, output_hidden_states=False, output_attentions=False):
        """Runs the image encoder: `(B, S, S, 3)` -> `(B, h, w, C)` (h = w = S / patch)."""
        pixel_values = _as_tensor("pixel_values", pixel_values, self.compute_dtype)
        self._check_pixel_values(pixel_values)
        return self.vision_encoder(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )

    def get_prompt_embeddings(self, input_points=None, input_labels=None, input_boxes=None, input_masks=None):
        """Runs the prompt encoder.

        Returns `(sparse (B, P, T, C) or None, dense (B, h, w, C))`; shapes as in `call`.
        """
        points, labels, boxes, masks = self._prepare_prompts(input_points, input_labels, input_boxes, input_masks)
        return self.prompt_encoder(points, labels, boxes, masks)

    def get_decoder_cache(self, image_embeddings):
        """The mask decoder's work that depends on the image alone, for `decode_with_cache`.

        Point and box prompts do not change it: the grid's positional encoding and the
        first two-way block's image projections (with the no-mask dense embedding added).
        `SamPredictor` computes it once per image: each later one-point ViT-B decode then
        took 20.4 instead of 23.2 ms on a 2-thread CPU (tools/BENCHMARKS.md).

        Args:
            image_embeddings: `(B, h, w, C)` from `get_image_embeddings`.
        Returns:
            A dict of tensors; pass it to `decode_with_cache` unchanged.
        """
        image_embeddings = _as_tensor("image_embeddings", image_embeddings, self.compute_dtype)
        self._check_image_embeddings(image_embeddings)
        image_pe = self.get_image_wide_positional_embeddings()
        _, no_mask = self.prompt_encoder(None, None, None, None, broadcast_dense=False)
        return {
            "image_embeddings": image_embeddings,
            "image_pe": image_pe,
            "image_projections": self.mask_decoder.project_image(image_embeddings, image_pe, no_mask),
        }

    def decode_with_cache(self, decoder_cache, input_points=None, input_labels=None, input_boxes=None,
                          multimask_output=True):
        """Decodes point/box prompts against `get_decoder_cache(image_embeddings)`.

        Same result as `call(image_embeddings=..., input_points=..., ...)` (within float
        rounding). Mask prompts change the image side, so they go through `call`.

        Args:
            decoder_cache: the dict `get_decoder_cache` returned.
            input_points, input_labels, input_boxes, multimask_output: as in `call`.
        Returns: `SamImageSegmentationOutput` with `iou_scores (B, P, M)` and
        `pred_masks (B, P, M, 4h, 4w)`.
        """
        expected = {"image_embeddings", "image_pe", "image_projections"}
        if not isinstance(decoder_cache, dict) or set(decoder_cache) != expected:
            raise ValueError("`decoder_cache` must be the dict returned by `get_decoder_cache(image_embeddings)`.")
        points, labels, boxes, _ = self._prepare_prompts(input_points, input_labels, input_boxes, None)
        if points is None and boxes is None:
            raise ValueError("Give `input_points` or `input_boxes` to decode against a cached image.")
        image_embeddings = decoder_cache["image_embeddings"]
        self._check_batch(image_embeddings.shape[0], input_points=points, input_labels=labels, input_boxes=boxes)
        sparse, no_mask = self.prompt_encoder(points, labels, boxes, None, broadcast_dense=False)
        masks_out, iou, _ = self.mask_decoder(
            image_embeddings, decoder_cache["image_pe"], sparse, no_mask, multimask_output=multimask_output,
            image_projections=tuple(decoder_cache["image_projections"]),
        )
        return SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks_out)

    # -------------------------------------------------------------------- call
    def call(self, inputs=None, pixel_values=None, input_points=None, input_labels=None, input_boxes=None,
             input_masks=None, image_embeddings=None, multimask_output=True, output_attentions=False,
             output_hidden_states=False, attention_similarity=None, target_embedding=None, training=None):
        if isinstance(inputs, dict):
            # Keras fit() passes one dict; unpack it into the keyword interface.
            unknown = set(inputs) - {
                "pixel_values", "input_points", "input_labels", "input_boxes", "input_masks", "image_embeddings",
            }
            if unknown:
                raise ValueError(f"Unknown model inputs {sorted(unknown)}.")
            pixel_values = inputs.get("pixel_values", pixel_values)
            input_points = inputs.get("input_points", input_points)
            input_labels = inputs.get("input_labels", input_labels)
            input_boxes = inputs.get("input_boxes", input_boxes)
            input_masks = inputs.get("input_masks", input_masks)
            image_embeddings = inputs.get("image_embeddings", image_embeddings)
        elif inputs is not None:
            if pixel_values is not None:
                raise ValueError("`pixel_values` was given twice (positionally and by keyword).")
            pixel_values = inputs

        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError(
                "Pass exactly one of `pixel_values` (batch, S, S, 3) or `image_embeddings` (batch, h, w, C); "
                f"got {'both' if pixel_values is not None else 'neither'}."
            )
        points, labels, boxes, masks = self._prepare_prompts(input_points, input_labels, input_boxes, input_masks)

        hidden_states = attentions = None
        if pixel_values is not None:
            pixel_values = _as_tensor("pixel_values", pixel_values, self.compute_dtype)
            self._check_pixel_values(pixel_values)
            batch = pixel_values.shape[0]
            self._check_batch(batch, input_points=points, input_labels=labels, input_boxes=boxes, input_masks=masks)
            encoded = self.vision_encoder(
                pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
            )
            if output_hidden_states or output_attentions:
                image_embeddings, hidden_states, attentions = encoded
            else:
                image_embeddings = encoded
        else:
            image_embeddings = _as_tensor("image_embeddings", image_embeddings, self.compute_dtype)
            self._check_image_embeddings(image_embeddings)
            self._check_batch(
                image_embeddings.shape[0], input_points=points, input_labels=labels, input_boxes=boxes,
                input_masks=masks,
            )

        sparse, dense = self.prompt_encoder(points, labels, boxes, masks, broadcast_dense=False)
        masks_out, iou, updates = self.mask_decoder(
            image_embeddings, self.get_image_wide_positional_embeddings(), sparse, dense,
            multimask_output=multimask_output, attention_similarity=attention_similarity,
            target_embedding=target_embedding,
        )
        out = SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks_out)
        if output_hidden_states:
            out["vision_hidden_states"] = hidden_states
        if output_attentions:
            out["vision_attentions"] = attentions
            out["mask_decoder_attentions"] = updates
        return out

    # ------------------------------------------------------------ persistence
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(SamConfig.from_dict(config.pop("config")), **config)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes `config.json` and `model.weights.h5` into `directory`."""
        from tf_sam.checkpoint.loading import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> "SamModel":
        """Loads a model from a directory we saved, an HF directory, a Meta `.pth` file or a Hub id.

        See `tf_sam.checkpoint.loading.load_pretrained` for the accepted sources.
        """
        from tf_sam.checkpoint.loading import load_pretrained

        return load_pretrained(source, **kwargs)


TFSamModel = SamModel
