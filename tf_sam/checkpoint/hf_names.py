"""Correspondence between Hugging Face `SamModel` parameter names and our variables.

Every Keras variable of `SamModel` has exactly one HF name; the table is built by walking
the model, so a layer added without a mapping shows up as a missing name in tests.
"""

from __future__ import annotations

import numpy as np

# How a PyTorch tensor is laid out relative to the Keras variable.
PLAIN, DENSE, CONV, CONV_TRANSPOSE = "plain", "dense", "conv", "conv_transpose"

# The prompt encoder's copy of the Fourier matrix is tied to this one in HF.
TIED_ALIASES = {"prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"}


def to_keras_layout(array: np.ndarray, kind: str) -> np.ndarray:
    """Converts a PyTorch tensor to the Keras variable layout.

    dense `(out, in)` -> `(in, out)`; conv `(out, in, kh, kw)` -> `(kh, kw, in, out)`;
    transposed conv `(in, out, kh, kw)` -> `(kh, kw, out, in)`.
    """
    if kind == DENSE:
        return array.T
    if kind in (CONV, CONV_TRANSPOSE):
        return array.transpose(2, 3, 1, 0)
    return array


def to_torch_layout(array: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of `to_keras_layout`."""
    if kind == DENSE:
        return array.T
    if kind in (CONV, CONV_TRANSPOSE):
        return array.transpose(3, 2, 0, 1)
    return array


def _dense(table, prefix, layer, torch_kind=DENSE):
    table[f"{prefix}.weight"] = (layer.kernel, torch_kind)
    if layer.use_bias:
        table[f"{prefix}.bias"] = (layer.bias, PLAIN)


def _norm(table, prefix, layer):
    table[f"{prefix}.weight"] = (layer.gamma, PLAIN)
    table[f"{prefix}.bias"] = (layer.beta, PLAIN)


def _feed_forward(table, prefix, ff):
    _dense(table, f"{prefix}.proj_in", ff.proj_in)
    for i, layer in enumerate(ff.hidden_layers):
        _dense(table, f"{prefix}.layers.{i}", layer)
    _dense(table, f"{prefix}.proj_out", ff.proj_out)


def _attention(table, prefix, attn):
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _dense(table, f"{prefix}.{name}", getattr(attn, name))


def hf_variable_table(model) -> dict:
    """Maps each HF parameter name to `(keras_variable, layout_kind)` for `model`."""
    t = {}
    t["shared_image_embedding.positional_embedding"] = (model.shared_image_embedding.positional_embedding, PLAIN)

    ve = model.vision_encoder
    _dense(t, "vision_encoder.patch_embed.projection", ve.patch_embed, CONV)
    if ve.config.use_abs_pos:
        t["vision_encoder.pos_embed"] = (ve.pos_embed, PLAIN)
    for i, layer in enumerate(ve.vision_layers):
        p = f"vision_encoder.layers.{i}"
        _norm(t, f"{p}.layer_norm1", layer.layer_norm1)
        _dense(t, f"{p}.attn.qkv", layer.attn.qkv)
        _dense(t, f"{p}.attn.proj", layer.attn.proj)
        if layer.attn.use_rel_pos:
            t[f"{p}.attn.rel_pos_h"] = (layer.attn.rel_pos_h, PLAIN)
            t[f"{p}.attn.rel_pos_w"] = (layer.attn.rel_pos_w, PLAIN)
        _norm(t, f"{p}.layer_norm2", layer.layer_norm2)
        _dense(t, f"{p}.mlp.lin1", layer.mlp.lin1)
        _dense(t, f"{p}.mlp.lin2", layer.mlp.lin2)
    _dense(t, "vision_encoder.neck.conv1", ve.neck.conv1, CONV)
    _norm(t, "vision_encoder.neck.layer_norm1", ve.neck.layer_norm1)
    _dense(t, "vision_encoder.neck.conv2", ve.neck.conv2, CONV)
    _norm(t, "vision_encoder.neck.layer_norm2", ve.neck.layer_norm2)

    pe = model.prompt_encoder
    me = pe.mask_embed
    for name in ("conv1", "conv2", "conv3"):
        _dense(t, f"prompt_encoder.mask_embed.{name}", getattr(me, name), CONV)
    _norm(t, "prompt_encoder.mask_embed.layer_norm1", me.layer_norm1)
    _norm(t, "prompt_encoder.mask_embed.layer_norm2", me.layer_norm2)
    t["prompt_encoder.no_mask_embed.weight"] = (pe.no_mask_embed, PLAIN)
    t["prompt_encoder.not_a_point_embed.weight"] = (pe.not_a_point_embed, PLAIN)
    for i, weight in enumerate(pe.point_embed):
        t[f"prompt_encoder.point_embed.{i}.weight"] = (weight, PLAIN)

    md = model.mask_decoder
    t["mask_decoder.iou_token.weight"] = (md.iou_token, PLAIN)
    t["mask_decoder.mask_tokens.weight"] = (md.mask_tokens, PLAIN)
    tr = md.transformer
    for i, block in enumerate(tr.blocks):
        p = f"mask_decoder.transformer.layers.{i}"
        _attention(t, f"{p}.self_attn", block.self_attn)
        _norm(t, f"{p}.layer_norm1", block.layer_norm1)
        _attention(t, f"{p}.cross_attn_token_to_image", block.cross_attn_token_to_image)
        _norm(t, f"{p}.layer_norm2", block.layer_norm2)
        _dense(t, f"{p}.mlp.lin1", block.mlp.lin1)
        _dense(t, f"{p}.mlp.lin2", block.mlp.lin2)
        _norm(t, f"{p}.layer_norm3", block.layer_norm3)
        _norm(t, f"{p}.layer_norm4", block.layer_norm4)
        _attention(t, f"{p}.cross_attn_image_to_token", block.cross_attn_image_to_token)
    _attention(t, "mask_decoder.transformer.final_attn_token_to_image", tr.final_attn_token_to_image)
    _norm(t, "mask_decoder.transformer.layer_norm_final_attn", tr.layer_norm_final_attn)
    _dense(t, "mask_decoder.upscale_conv1", md.upscale_conv1, CONV_TRANSPOSE)
    _dense(t, "mask_decoder.upscale_conv2", md.upscale_conv2, CONV_TRANSPOSE)
    _norm(t, "mask_decoder.upscale_layer_norm", md.upscale_layer_norm)
    for i, mlp in enumerate(md.output_hypernetworks_mlps):
        _feed_forward(t, f"mask_decoder.output_hypernetworks_mlps.{i}", mlp)
    _feed_forward(t, "mask_decoder.iou_prediction_head", md.iou_prediction_head)
    return t
