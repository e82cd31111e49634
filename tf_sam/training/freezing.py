"""Choosing what trains: part switches, LoRA on the image encoder, cached embeddings.

SAM's image encoder holds ~90% of the weights and ~99% of the compute. Fine-tuning
usually freezes it (training the light decoder only), or adapts it cheaply with LoRA on
its attention projections; with a frozen encoder the image embeddings never change, so
they can be computed once (`cache_image_embeddings`) and every later step runs only the
prompt encoder and decoder.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["freeze", "enable_lora", "lora_layers", "cache_image_embeddings", "trainable_summary"]

_PARTS = {"encoder": "vision_encoder", "prompt_encoder": "prompt_encoder", "decoder": "mask_decoder"}


def freeze(model, encoder=None, prompt_encoder=None, decoder=None):
    """Freezes (True) or unfreezes (False) SAM's parts; None leaves a part as it is.

    Args:
        model: a `SamModel`.
        encoder, prompt_encoder, decoder: the image encoder, prompt encoder, mask decoder.

    Returns:
        the model. Recompile after changing what trains: Keras fixes the trainable set
        when it builds the train function.
    """
    for key, value in (("encoder", encoder), ("prompt_encoder", prompt_encoder), ("decoder", decoder)):
        if value is not None:
            getattr(model, _PARTS[key]).trainable = not value
    return model


def lora_layers(model, targets=("qkv", "proj")):
    """The image encoder's attention `Dense` layers LoRA applies to: `[(name, layer)]`."""
    found = []
    for i, block in enumerate(model.vision_encoder.vision_layers):
        for target in targets:
            layer = getattr(block.attn, target, None)
            if layer is None:
                raise ValueError(f"vision layer {i} has no attention projection {target!r}")
            found.append((f"vision_encoder.layers_{i}.attn.{target}", layer))
    return found


def enable_lora(model, rank, targets=("qkv", "proj"), freeze_encoder_base=True):
    """LoRA on the image encoder's attention projections via Keras's `Dense.enable_lora`.

    Keras freezes each adapted kernel and adds trainable low-rank factors `A (in, r)`,
    `B (r, out)` with `B` zero-initialised, so the model starts exactly where it was.
    Saved weights (`save_weights`, `save_pretrained`) hold the merged kernel
    `W + A @ B * alpha / r`, so the result loads into a plain `SamModel`.

    Args:
        model: a built `SamModel`.
        rank: LoRA rank r >= 1.
        targets: attention sub-layers to adapt ("qkv", "proj").
        freeze_encoder_base: make every other encoder weight (patch embedding, norms, MLPs,
            neck, biases, rel-pos tables) non-trainable, leaving only the LoRA factors.

    Returns:
        list of the adapted layer names.
    """
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}.")
    layers = lora_layers(model, targets)
    model.vision_encoder.trainable = True
    lora_vars = []
    for _, layer in layers:
        if not getattr(layer, "lora_enabled", False):
            layer.enable_lora(rank)
        lora_vars += [layer.lora_kernel_a, layer.lora_kernel_b]
    if freeze_encoder_base:
        keep = {id(v) for v in lora_vars}
        # Per-variable switches: turning the encoder layer off would also freeze its LoRA factors.
        for variable in model.vision_encoder.weights:
            if id(variable) not in keep:
                variable.trainable = False
    return [name for name, _ in layers]


def trainable_summary(model):
    """`{part: (trainable parameters, total parameters)}` for the three parts and the model."""
    out = {}
    for key, attr in _PARTS.items():
        layer = getattr(model, attr)
        out[key] = (_count(layer.trainable_weights), _count(layer.weights))
    out["total"] = (_count(model.trainable_weights), _count(model.weights))
    return out


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def cache_image_embeddings(model, images, batch_size=8, dtype="float32"):
    """Runs the image encoder once over a stage-one dataset and keeps the embeddings.

    Args:
        model: a `SamModel` whose encoder stays frozen afterwards (else the cache is stale).
        images: dataset of `{"pixel_values": (S, S, 3), "label_map": (S, S)}` from
            `datasets.image_dataset`.
        batch_size: images per encoder call.
        dtype: storage dtype of the cache ("float16" halves the memory; ViT-B's embeddings
            are 4 MiB per image in float32).

    Returns:
        in-memory `tf.data.Dataset` of `{"image_embeddings": (h, w, C), "label_map": (S, S)}`,
        to pass to `datasets.prompt_dataset` like the pixel dataset; the decoder then trains
        without running the encoder.
    """
    encode = tf.function(lambda pixels: model.vision_encoder(pixels, training=False), reduce_retracing=True)
    embeddings, label_maps = [], []
    for batch in images.batch(batch_size):
        embeddings.append(np.asarray(tf.cast(encode(batch["pixel_values"]), tf.float32)).astype(dtype))
        label_maps.append(batch["label_map"].numpy())
    if not embeddings:
        raise ValueError("cannot cache embeddings of an empty dataset")
    data = {"image_embeddings": np.concatenate(embeddings), "label_map": np.concatenate(label_maps)}
    ds = tf.data.Dataset.from_tensor_slices(data)
    if dtype != "float32":
        ds = ds.map(lambda e: {**e, "image_embeddings": tf.cast(e["image_embeddings"], tf.float32)})
    return ds
