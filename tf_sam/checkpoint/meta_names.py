"""Meta's original `segment_anything` checkpoint layout (`sam_vit_b_01ec64.pth` style).

Key names follow `segment_anything/modeling/*.py` at facebookresearch/segment-anything
dca509f: `image_encoder.blocks.{i}.norm1`, `neck.{0..3}` (Conv, LayerNorm2d, Conv,
LayerNorm2d), `prompt_encoder.mask_downscaling.{0,1,3,4,6}` (Sequential with activations
at 2 and 5), `mask_decoder.output_upscaling.{0,1,3}`, MLP heads as `layers.{0..n-1}`.
HF's converter (transformers' `convert_sam_to_hf.py`) applies the same renames.
"""

from __future__ import annotations

import re

from tf_sam.config import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

# Applied in order to a Meta key to obtain the HF key.
_RENAMES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.blocks\.", ".layers."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.neck\.0\.", ".neck.conv1."),
    (r"\.neck\.1\.", ".neck.layer_norm1."),
    (r"\.neck\.2\.", ".neck.conv2."),
    (r"\.neck\.3\.", ".neck.layer_norm2."),
    (r"\.norm(\d)\.", r".layer_norm\1."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "shared_image_embedding.positional_embedding"),
    (r"\.point_embeddings\.", ".point_embed."),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
]
_MLP_HEAD = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$")


def is_meta_state_dict(keys) -> bool:
    """True when the names look like Meta's layout rather than HF's."""
    return any(k.startswith("image_encoder.") for k in keys)


def meta_to_hf_name(key: str, head_depths: dict[str, int]) -> str:
    """Renames one Meta key to HF's name.

    `head_depths` gives the number of linear layers of each MLP head prefix, because
    Meta numbers them `layers.0..n-1` while HF splits them into `proj_in`,
    `layers.0..n-3`, `proj_out`.
    """
    m = _MLP_HEAD.match(key)
    if m:
        prefix, index, rest = m.group(1), int(m.group(2)), m.group(3)
        depth = head_depths[prefix]
        if index == 0:
            return f"{prefix}.proj_in.{rest}"
        if index == depth - 1:
            return f"{prefix}.proj_out.{rest}"
        return f"{prefix}.layers.{index - 1}.{rest}"
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def strip_wrapper_prefix(keys):
    """Returns the prefix ('model.', 'module.', ...) that wraps every key, or ''."""
    for prefix in ("model.", "module.", "sam.", "state_dict."):
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def mlp_head_depths(keys) -> dict[str, int]:
    """Counts linear layers per MLP head prefix in Meta keys."""
    depths: dict[str, int] = {}
    for key in keys:
        m = _MLP_HEAD.match(key)
        if m:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return depths


def infer_config(shapes: dict[str, tuple]) -> SamConfig:
    """Infers the architecture from Meta tensor shapes (ViT-B/L/H, SlimSAM, MedSAM...).

    Only the decoder's head count cannot be read off shapes; SAM always uses 8.
    """
    def need(key):
        if key not in shapes:
            raise ValueError(f"Meta checkpoint is missing {key!r}; cannot infer the architecture.")
        return shapes[key]

    hidden, _, patch, _ = need("image_encoder.patch_embed.proj.weight")
    blocks = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("image_encoder.blocks.")})
    depth = len(blocks)
    use_abs_pos = "image_encoder.pos_embed" in shapes
    if use_abs_pos:
        grid = need("image_encoder.pos_embed")[1]
    else:
        grid = 64
    image_size = grid * patch
    use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in shapes
    window, global_idx, head_dim = 14, [], None
    if use_rel_pos:
        for i in blocks:
            rows, head_dim = need(f"image_encoder.blocks.{i}.attn.rel_pos_h")
            if rows == 2 * grid - 1:
                global_idx.append(i)
            else:
                window = (rows + 1) // 2
    heads = hidden // head_dim if head_dim else {768: 12, 1024: 16, 1280: 16}.get(hidden, 12)
    vision = SamVisionConfig(
        hidden_size=hidden,
        output_channels=need("image_encoder.neck.0.weight")[0],
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in shapes,
        use_abs_pos=use_abs_pos,
        use_rel_pos=use_rel_pos,
        window_size=window,
        global_attn_indexes=tuple(global_idx),
        num_pos_feats=need("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")[1],
        mlp_dim=need("image_encoder.blocks.0.mlp.lin1.weight")[0],
    )
    decoder_hidden = need("mask_decoder.iou_token.weight")[1]
    prompt = SamPromptEncoderConfig(
        hidden_size=need("prompt_encoder.no_mask_embed.weight")[1],
        image_size=image_size,
        patch_size=patch,
        mask_input_channels=need("prompt_encoder.mask_downscaling.3.weight")[0],
        num_point_embeddings=len([k for k in shapes if k.startswith("prompt_encoder.point_embeddings.")]),
    )
    n_layers = len({k.split(".")[3] for k in shapes if k.startswith("mask_decoder.transformer.layers.")})
    cross_q = need("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    depths = mlp_head_depths(shapes)
    decoder = SamMaskDecoderConfig(
        hidden_size=decoder_hidden,
        mlp_dim=need("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        num_hidden_layers=n_layers,
        num_attention_heads=8,
        attention_downsample_rate=decoder_hidden // cross_q,
        num_multimask_outputs=need("mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=depths.get("mask_decoder.iou_prediction_head", 3),
        iou_head_hidden_dim=need("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
