"""Every checkpoint source loads to the same numbers as the reference; bad ones fail clearly."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.conftest import max_rel_err, perturbed_hf_model, tiny_config_dict, to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tf_sam  # noqa: E402
from tf_sam.checkpoint import CheckpointError  # noqa: E402


def hf_to_meta_key(key):
    """HF name -> Meta `segment_anything` name, written from Meta's module definitions.

    Verified by reading facebookresearch/segment-anything's modeling/ sources: the image
    encoder's `blocks.{i}.norm1/attn.qkv/attn.rel_pos_h/mlp.lin1`, `patch_embed.proj`,
    `neck` = Sequential(Conv, LayerNorm2d, Conv, LayerNorm2d); the prompt encoder's
    `pe_layer.positional_encoding_gaussian_matrix` buffer, `point_embeddings.{i}` and
    `mask_downscaling` = Sequential(Conv, LN2d, GELU, Conv, LN2d, GELU, Conv); the decoder's
    `output_upscaling` = Sequential(ConvT, LN2d, GELU, ConvT, GELU), MLP heads as
    `layers.{0..n-1}`, transformer `norm1..4` and `norm_final_attn`.
    """
    if key == "prompt_encoder.shared_embedding.positional_embedding":
        return None  # HF's tied copy; Meta stores the matrix once
    if key == "shared_image_embedding.positional_embedding":
        return "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    m = re.match(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|proj_out|layers\.(\d+))\.(.*)$", key)
    if m:
        prefix, part, hidden, rest = m.groups()
        index = 0 if part == "proj_in" else (int(hidden) + 1 if hidden is not None else "LAST")
        return f"{prefix}.layers.{index}.{rest}"
    table = [
        ("vision_encoder.", "image_encoder."), (".layers.", ".blocks."),
        ("patch_embed.projection", "patch_embed.proj"),
        ("neck.conv1", "neck.0"), ("neck.layer_norm1", "neck.1"), ("neck.conv2", "neck.2"), ("neck.layer_norm2", "neck.3"),
        ("mask_embed.conv1", "mask_downscaling.0"), ("mask_embed.layer_norm1", "mask_downscaling.1"),
        ("mask_embed.conv2", "mask_downscaling.3"), ("mask_embed.layer_norm2", "mask_downscaling.4"),
        ("mask_embed.conv3", "mask_downscaling.6"), (".point_embed.", ".point_embeddings."),
        ("upscale_conv1", "output_upscaling.0"), ("upscale_layer_norm", "output_upscaling.1"),
        ("upscale_conv2", "output_upscaling.3"), ("layer_norm_final_attn", "norm_final_attn"),
    ]
    for old, new in table:
        key = key.replace(old, new)
    if key.startswith("mask_decoder.transformer.blocks."):
        key = key.replace("mask_decoder.transformer.blocks.", "mask_decoder.transformer.layers.")
    return re.sub(r"\.layer_norm(\d)\.", r".norm\1.", key)


def meta_state_dict(hf_model):
    state = {}
    for key, value in hf_model.state_dict().items():
        meta = hf_to_meta_key(key)
        if meta is not None:
            state[meta] = value.clone()
    # proj_out is the last of Meta's numbered layers; number it now that depths are known.
    depths = {}
    for key in state:
        m = re.match(r"^(.*)\.layers\.(\d+)\.", key)
        if m and "mask_decoder." in key and "transformer" not in key:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return {
        re.sub(r"\.layers\.LAST\.", lambda _m: f".layers.{depths[k.split('.layers.')[0]]}.", k): v
        for k, v in state.items()
    }


def _outputs(model, hf=False):
    rng = np.random.default_rng(7)
    size = 64
    pixels = rng.standard_normal((1, size, size, 3)).astype("float32")
    points = np.array([[[[10.0, 20.0], [40.0, 50.0]]]], "float32")
    labels = np.array([[[1, 0]]])
    if hf:
        with torch.no_grad():
            out = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
                        input_points=torch.tensor(points), input_labels=torch.tensor(labels))
        return to_numpy(out.pred_masks), to_numpy(out.iou_scores)
    out = model(pixel_values=pixels, input_points=points, input_labels=labels)
    return np.asarray(out.pred_masks), np.asarray(out.iou_scores)


@pytest.fixture(scope="module")
def reference(hf_small_checkpoints):
    hf, directory = hf_small_checkpoints["padded-windows"]
    return hf, directory, _outputs(hf, hf=True)


def _assert_matches(model, reference):
    masks, iou = _outputs(model)
    assert max_rel_err(masks, reference[2][0]) <= 1e-5
    assert max_rel_err(iou, reference[2][1]) <= 1e-5


def test_hf_safetensors_directory(reference):
    _assert_matches(tf_sam.SamModel.from_pretrained(reference[1]), reference)


def test_hf_pytorch_bin_directory_read_without_torch_pickle(reference, tmp_path):
    # transformers 5 only writes safetensors; older releases (and many Hub repos) hold a
    # torch.save'd state dict under this name, including the tied positional matrix.
    torch.save(reference[0].state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((reference[1] / "config.json").read_text())
    _assert_matches(tf_sam.SamModel.from_pretrained(tmp_path), reference)


def test_sharded_safetensors_directory(reference, tmp_path):
    reference[0].save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _assert_matches(tf_sam.SamModel.from_pretrained(tmp_path), reference)


@pytest.fixture(scope="module")
def meta_reference(tmp_path_factory):
    """A model whose decoder has SAM's 8 heads: the one field shapes cannot reveal."""
    hf = perturbed_hf_model(tiny_config_dict(decoder_heads=8), seed=11)
    directory = tmp_path_factory.mktemp("hf-meta")
    hf.save_pretrained(directory)
    return hf, directory, _outputs(hf, hf=True)


def test_meta_pth_layout_infers_architecture(meta_reference, tmp_path):
    reference = meta_reference
    path = tmp_path / "sam_vit_tiny.pth"
    state = meta_state_dict(reference[0])
    assert "image_encoder.neck.0.weight" in state and "mask_decoder.iou_prediction_head.layers.2.bias" in state
    torch.save(state, path)
    model = tf_sam.SamModel.from_pretrained(path)
    hf_config = json.loads((reference[1] / "config.json").read_text())
    assert model.config.vision_config.window_size == hf_config["vision_config"]["window_size"]
    assert model.config.vision_config.global_attn_indexes == tuple(hf_config["vision_config"]["global_attn_indexes"])
    assert model.config.vision_config.mlp_dim == hf_config["vision_config"]["mlp_dim"]
    _assert_matches(model, reference)


def test_meta_checkpoint_wrapped_in_training_dict(meta_reference, tmp_path):
    path = tmp_path / "medsam_like.pth"
    torch.save({"model": meta_state_dict(meta_reference[0]), "epoch": 3}, path)
    _assert_matches(tf_sam.SamModel.from_pretrained(path), meta_reference)


def test_meta_checkpoint_with_explicit_config(reference, tmp_path):
    """A Meta-format model with a non-SAM decoder head count loads given its config."""
    path = tmp_path / "custom.pth"
    torch.save(meta_state_dict(reference[0]), path)
    config = tf_sam.SamConfig.from_pretrained(reference[1])
    _assert_matches(tf_sam.SamModel.from_pretrained(path, config=config), reference)


def test_save_pretrained_round_trip_and_keras_file(reference, tmp_path):
    model = tf_sam.SamModel.from_pretrained(reference[1])
    model.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "model.weights.h5"]
    _assert_matches(tf_sam.SamModel.from_pretrained(tmp_path / "ours"), reference)
    model.save(tmp_path / "sam.keras")
    restored = keras.models.load_model(tmp_path / "sam.keras")
    assert isinstance(restored, tf_sam.SamModel)
    _assert_matches(restored, reference)
    _assert_matches(tf_sam.SamModel.from_pretrained(tmp_path / "sam.keras"), reference)


def test_missing_unexpected_and_misshaped_tensors_are_listed(reference, tmp_path):
    from safetensors.numpy import save_file

    state = {k: v.numpy() for k, v in reference[0].state_dict().items()}
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = np.zeros(3, "float32")
    state["vision_encoder.neck.conv1.weight"] = np.zeros((2, 2, 1, 1), "float32")
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((reference[1] / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        tf_sam.SamModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "1 missing: mask_decoder.iou_token.weight" in message
    assert "1 unexpected: mask_decoder.extra.weight" in message
    assert "vision_encoder.neck.conv1.weight: checkpoint (2, 2, 1, 1) vs model (16, 32, 1, 1)" in message


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights_file(reference, tmp_path, name):
    (tmp_path / "config.json").write_text((reference[1] / "config.json").read_text())
    (tmp_path / name).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=re.escape(name)):
        tf_sam.SamModel.from_pretrained(tmp_path)


def test_truncated_pth(reference, tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(meta_state_dict(reference[0]), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sam.pth"):
        tf_sam.SamModel.from_pretrained(path)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": Evil()}, path)
    with pytest.raises(Exception, match="refusing"):
        tf_sam.SamModel.from_pretrained(path)


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        tf_sam.SamModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(CheckpointError, match="no weights"):
        tf_sam.SamModel.from_pretrained(tmp_path)


def test_nonexistent_path_is_not_mistaken_for_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        tf_sam.SamModel.from_pretrained(str(tmp_path / "nope" / "sam.pth"))


def test_hub_id_offline_says_how_to_pass_a_local_path(tmp_path):
    """This machine has no Hub access: the error must tell users what to pass instead."""
    code = (
        "import tf_sam\n"
        "try:\n"
        "    tf_sam.SamModel.from_pretrained('facebook/sam-vit-base', cache_dir=%r)\n"
        "except OSError as e:\n"
        "    print('ERR', e)\n" % str(tmp_path)
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ERR Could not download 'facebook/sam-vit-base'" in result.stdout, result.stdout + result.stderr
    assert "pass a local checkpoint" in result.stdout
    assert "sam_vit_b_01ec64.pth" in result.stdout
