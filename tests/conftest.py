"""Shared test harness: reference HF models with perturbed random weights, small configs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
IMAGES = SHARED / "images"


def tiny_config_dict(
    hidden=32, layers=2, heads=2, image=64, patch=8, window=3, global_idx=(1,), mlp_dim=40,
    decoder_hidden=16, decoder_heads=2, decoder_mlp=24, mask_channels=8,
):
    """An HF-format SamConfig dict small enough for fast tests."""
    return dict(
        vision_config=dict(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=image,
            patch_size=patch, window_size=window, global_attn_indexes=list(global_idx),
            output_channels=decoder_hidden, mlp_dim=mlp_dim, num_pos_feats=decoder_hidden // 2,
        ),
        prompt_encoder_config=dict(
            hidden_size=decoder_hidden, image_size=image, patch_size=patch, mask_input_channels=mask_channels,
        ),
        mask_decoder_config=dict(
            hidden_size=decoder_hidden, mlp_dim=decoder_mlp, num_attention_heads=decoder_heads,
            iou_head_hidden_dim=decoder_hidden,
        ),
    )


# Several shapes of model: a padded window grid (8 is not a multiple of 3), SlimSAM-77's
# pruned widths (head size 14, mlp_dim unrelated to hidden size), a window that divides
# the grid exactly, a decoder whose cross attentions fold (as ViT-B's do), and a 3-block
# decoder.
SMALL_CONFIGS = {
    "padded-windows": tiny_config_dict(),
    "slimsam77-shaped": tiny_config_dict(hidden=168, heads=12, mlp_dim=696, layers=3, global_idx=(2,), window=4),
    "exact-windows": tiny_config_dict(image=96, patch=8, window=4, layers=3, global_idx=(0, 2), heads=4),
    # heads x tokens (2 x 7) well under the internal width (32): few-prompt cross
    # attentions take SamAttention's folded paths, as ViT-B's (8 x 7 vs 128) do.
    "folded-attention": tiny_config_dict(decoder_hidden=64, decoder_heads=2, decoder_mlp=48),
    "deeper-decoder": {
        **tiny_config_dict(decoder_hidden=32, decoder_heads=4, decoder_mlp=48),
        "mask_decoder_config": dict(
            hidden_size=32, mlp_dim=48, num_attention_heads=4, iou_head_hidden_dim=24, num_hidden_layers=3,
            iou_head_depth=4,
        ),
    },
}


def perturbed_hf_model(config_dict, seed=0):
    """Builds HF's PyTorch SamModel with every parameter perturbed.

    HF zero-initialises rel-pos tables and the absolute position embedding; adding noise
    to every tensor makes sure no zero-init path hides a mapping error.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = transformers.SamModel(transformers.SamConfig(**config_dict)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            # Fan-in scaled noise keeps activations O(1) so masks are large enough for the
            # relative tolerance to mean something.
            fan_in = param.shape[-1] if param.dim() > 1 else 16
            param.add_(torch.randn(param.shape, generator=generator) * 0.5 / fan_in**0.5)
    return model


@pytest.fixture(scope="session")
def hf_small_checkpoints(tmp_path_factory):
    """`{name: (hf_model, saved_dir)}` for every SMALL_CONFIGS entry (saved as safetensors)."""
    out = {}
    for i, (name, cfg) in enumerate(SMALL_CONFIGS.items()):
        model = perturbed_hf_model(cfg, seed=i)
        directory = tmp_path_factory.mktemp(f"hf-{name}")
        model.save_pretrained(directory)
        out[name] = (model, directory)
    return out


@pytest.fixture(scope="session")
def hf_vit_b(tmp_path_factory):
    """`(hf_model, saved_dir)` for the full ViT-B architecture with perturbed random weights.

    Built once per session: the suite's only big model, shared by every ViT-B test.
    """
    model = perturbed_hf_model({}, seed=42)  # HF's SamConfig() defaults are the ViT-B encoder
    directory = tmp_path_factory.mktemp("hf-vit-b")
    model.save_pretrained(directory)
    return model, directory


def require_shared_image(name):
    """Path of a photo in ../shared/images, or skip with the reason."""
    path = IMAGES / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real photos live in ../shared/images beside the checkout")
    return path


def mask_iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def max_rel_err(ours, ref):
    """max |ours - ref| / max(1, max |ref|): the issue's parity metric."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def to_numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
