"""Configs read and write HF config.json files field for field."""

import json

import pytest

import tf_sam
from tf_sam.config import PRESETS, SamConfig
from tests.conftest import SMALL_CONFIGS


def test_defaults_are_sam_vit_huge_like_hf():
    c = SamConfig()
    assert c.vision_config.hidden_size == 768 and c.vision_config.mlp_dim == 3072
    assert c.prompt_encoder_config.image_embedding_size == 64
    assert c.mask_decoder_config.iou_head_hidden_dim == 256


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_consistent_configs(name):
    c = SamConfig.from_preset(name)
    assert c.vision_config.hidden_size % c.vision_config.num_attention_heads == 0
    assert c.vision_config.output_channels == 256


def test_slimsam77_has_head_size_14_and_independent_mlp():
    v = SamConfig.from_preset("slimsam-77").vision_config
    assert v.hidden_size // v.num_attention_heads == 14
    assert v.mlp_dim == 696 != v.hidden_size * v.mlp_ratio


@pytest.mark.parametrize("name", list(SMALL_CONFIGS) + ["hf-defaults"])
def test_round_trip_through_hf(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    kwargs = SMALL_CONFIGS.get(name, {})
    hf = transformers.SamConfig(**kwargs)
    hf.save_pretrained(tmp_path / "hf")
    ours = SamConfig.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.SamConfig.from_pretrained(tmp_path / "ours")
    for part in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        theirs, mine = getattr(hf, part).to_dict(), getattr(back, part).to_dict()
        for key, value in getattr(ours, part).to_dict().items():
            expected = theirs[key]
            assert mine[key] == (list(expected) if isinstance(expected, tuple) else expected), (part, key)
            assert value == (list(expected) if isinstance(expected, tuple) else expected), (part, key)


def test_unknown_preset_and_inconsistent_config():
    with pytest.raises(ValueError, match="Unknown preset 'sam-vit-tiny'"):
        SamConfig.from_preset("sam-vit-tiny")
    with pytest.raises(ValueError, match="output_channels=128 != prompt_encoder_config.hidden_size=256"):
        SamConfig(vision_config=dict(output_channels=128))
    with pytest.raises(ValueError, match="not divisible by num_attention_heads=5"):
        SamConfig(vision_config=dict(num_attention_heads=5))


def test_non_sam_config_json_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        SamConfig.from_pretrained(tmp_path)


def test_model_get_config_round_trip():
    model = tf_sam.SamModel(SMALL_CONFIGS["padded-windows"])
    clone = tf_sam.SamModel.from_config(model.get_config())
    assert clone.config.to_dict() == model.config.to_dict()
    assert tf_sam.TFSamModel is tf_sam.SamModel
