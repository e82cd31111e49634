"""TFLite export of SAM's two halves, with TFLite builtin ops only.

- `part="encoder"`: `pixel_values (1, S, S, 3)` (the processor's output) -> image
  embeddings `(1, h, w, C)`.
- `part="decoder"`: Meta's ONNX decoder contract — `image_embeddings (1, h, w, C)`,
  `point_coords (1, P, 2)` in original pixels, `point_labels (1, P)` float (-1 pads,
  2/3 box corners), `mask_input (1, 4h, 4w)`, `has_mask_input (1,)`, `orig_im_size (2,)`
  -> `masks (1, M, H, W)` upscaled logits, `iou_predictions (1, M)`,
  `low_res_masks (1, M, 4h, 4w)`; M = 1 with `return_single_mask` (chosen arithmetically,
  as in Meta's export), else 3.
A conversion that would need Flex (SELECT_TF_OPS) kernels fails and names the ops: phones
and LiteRT builds without Flex could not run it.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

from tf_sam.modeling.common import gelu_as_single_op, tanh_gelu
from tf_sam.processing import image_ops

QUANTIZATIONS = (None, "float16", "dynamic_int8")


class FlexOpsError(ValueError):
    """The graph needs TensorFlow (Flex) kernels that builtin-only TFLite runtimes lack."""


def _decoder_function(model, image_processor, return_single_mask):
    config = model.config
    grid = config.vision_config.image_embedding_size
    channels = config.vision_config.output_channels
    side = 4 * config.prompt_encoder_config.image_embedding_size
    longest = image_processor.size["longest_edge"]
    pad = (image_processor.pad_size["height"], image_processor.pad_size["width"])

    @tf.function(input_signature=[
        tf.TensorSpec([1, grid, grid, channels], tf.float32, name="image_embeddings"),
        tf.TensorSpec([1, None, 2], tf.float32, name="point_coords"),
        tf.TensorSpec([1, None], tf.float32, name="point_labels"),
        tf.TensorSpec([1, side, side], tf.float32, name="mask_input"),
        tf.TensorSpec([1], tf.float32, name="has_mask_input"),
        tf.TensorSpec([2], tf.int32, name="orig_im_size"),
    ])
    def decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        # float32 throughout: TFLite has no float64 kernels (HF's float64 scaling differs
        # by well under a thousandth of a pixel).
        reshaped = tf.stack(image_ops.get_preprocess_shape(orig_im_size[0], orig_im_size[1], longest, tf.float32))
        coords = image_ops.scale_coordinates(point_coords, orig_im_size, reshaped, tf.float32)
        labels = tf.cast(point_labels, tf.int32)
        encoder = model.prompt_encoder
        sparse = encoder.embed_points(coords[:, None], labels[:, None], pad=False)
        has_mask = tf.reshape(has_mask_input, [1, 1, 1, 1])
        dense = has_mask * encoder.mask_embed(mask_input[..., None]) + (1.0 - has_mask) * tf.reshape(
            encoder.no_mask_embed, [1, 1, 1, -1]
        )
        low_res, iou, _ = model.mask_decoder(
            image_embeddings, model.get_image_wide_positional_embeddings(), sparse, dense,
            multimask_output="all" if return_single_mask else True,
        )
        low_res, iou = low_res[:, 0], iou[:, 0]
        if return_single_mask:
            # Meta's rule without branching: with more than two points the single-mask
            # token wins, otherwise the best-scoring multimask output.
            points = tf.cast(tf.shape(point_coords)[1], tf.float32)
            reweight = tf.one_hot(0, tf.shape(iou)[-1]) * 1000.0
            best = tf.argmax(iou + (points - 2.5) * reweight, axis=-1, output_type=tf.int32)
            pick = tf.one_hot(best, tf.shape(iou)[-1])  # (1, 4)
            low_res = tf.reduce_sum(low_res * pick[:, :, None, None], axis=1, keepdims=True)
            iou = tf.reduce_sum(iou * pick, axis=1, keepdims=True)
        masks = image_ops.postprocess_masks(low_res, orig_im_size, reshaped, pad, binarize=False)
        return {"masks": masks, "iou_predictions": iou, "low_res_masks": low_res}

    return decode


def _encoder_function(model):
    size = model.config.vision_config.image_size

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="pixel_values")])
    def encode(pixel_values):
        return {"image_embeddings": model.vision_encoder(pixel_values)}

    return encode


def _frozen(concrete):
    """`concrete` with its weights folded into constants, keeping input and output names.

    The converter left Keras 3's weights as resource variables (VAR_HANDLE ops) that the
    interpreter never initialises, whatever its freezing flags; freezing here is explicit.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    specs = list(concrete.structured_input_signature[0])
    names = sorted(concrete.structured_outputs)  # tf.nest flattens dicts in key order

    @tf.function(input_signature=specs)
    def named(*args):
        return dict(zip(names, frozen(*args)))

    return named.get_concrete_function()


def _flex_ops(message):
    match = re.search(r"TF Select ops: ([^\n]+)", message)
    if match:
        return match.group(1).strip()
    return ", ".join(sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", message))))


def convert_to_tflite(model, part="decoder", quantization=None, tanh_gelu_approximation=False,
                      return_single_mask=False, image_processor=None) -> bytes:
    """Converts one half of `model` to a TFLite flatbuffer (builtin ops only).

    Args:
        model: a `tf_sam.SamModel`.
        part: "decoder" (prompt encoder + mask decoder + upscaling) or "encoder".
        quantization: None (fp32), "float16" (fp16 weights) or "dynamic_int8"
            (int8 weights, dynamic-range activations).
        tanh_gelu_approximation: trace GELUs with tanh, for runtimes without erf.
        return_single_mask: decoder only; see the module docstring.
        image_processor: decoder only; coordinate/mask sizes (default: follow the model).

    Returns: the `.tflite` bytes. Raises FlexOpsError naming ops that need Flex.
    """
    from tf_sam.processing import SamImageProcessor

    if part not in ("decoder", "encoder"):
        raise ValueError(f"part must be 'decoder' or 'encoder', got {part!r}.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}.")
    processor = image_processor or SamImageProcessor.for_model(model)
    with tanh_gelu() if tanh_gelu_approximation else gelu_as_single_op():
        fn = _decoder_function(model, processor, return_single_mask) if part == "decoder" else _encoder_function(model)
        concrete = fn.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen(concrete)], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError with MLIR diagnostics
        ops = _flex_ops(str(e))
        if ops:
            raise FlexOpsError(
                f"the SAM {part} needs TensorFlow ops that TFLite builtins lack ({ops}); such a model "
                "would need the Flex delegate, which phones and LiteRT usually do not have."
            ) from None
        raise


def export_tflite(model, path, part="decoder", quantization=None, tanh_gelu_approximation=False,
                  return_single_mask=False, image_processor=None, overwrite=False):
    """Writes `convert_to_tflite(...)` to `path` atomically; returns the file size in bytes."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
    data = convert_to_tflite(model, part, quantization, tanh_gelu_approximation, return_single_mask, image_processor)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staging = path + ".partial"
    with open(staging, "wb") as f:
        f.write(data)
    os.replace(staging, path)
    return len(data)
