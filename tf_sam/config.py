"""Configuration objects for SAM, compatible with Hugging Face `config.json` files.

The four classes mirror `transformers.SamConfig` and its three sub-configs field for
field, so a `config.json` written by either library reads into the other unchanged.
They are plain dataclasses: no framework code lives here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


def _to_pair(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"Only square sizes are supported, got {value!r}.")
        return int(value[0])
    return int(value)


class _ConfigBase:
    """Shared dict/JSON plumbing for the config dataclasses."""

    model_type: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        """Builds the config from a dict, ignoring keys HF adds that carry no architecture."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-serialisable dict in HF's layout."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["model_type"] = self.model_type
        return out


@dataclasses.dataclass
class SamVisionConfig(_ConfigBase):
    """ViT image encoder configuration (HF `SamVisionConfig`).

    `mlp_dim` defaults to `hidden_size * mlp_ratio` but may be set on its own, as
    pruned models (SlimSAM) do; the head size is `hidden_size // num_attention_heads`
    and need not be a power of two.
    """

    model_type = "sam_vision_model"

    hidden_size: int = 768
    output_channels: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    num_pos_feats: int = 128
    mlp_dim: int | None = None

    def __post_init__(self):
        self.image_size = _to_pair(self.image_size)
        self.patch_size = _to_pair(self.patch_size)
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        if self.mlp_dim is None:
            self.mlp_dim = int(self.hidden_size * self.mlp_ratio)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision image_size={self.image_size} is not a multiple of patch_size={self.patch_size}."
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"global_attn_indexes {bad} are outside 0..{self.num_hidden_layers - 1}."
            )

    @property
    def image_embedding_size(self) -> int:
        """Side of the square embedding grid, `image_size // patch_size` (64 for SAM)."""
        return self.image_size // self.patch_size

    @property
    def scale(self) -> int:
        """Std of the random-Fourier matrix at init; HF writes it into config.json."""
        return self.hidden_size // 2

    def to_dict(self):
        out = super().to_dict()
        out["scale"] = self.scale
        return out


@dataclasses.dataclass
class SamPromptEncoderConfig(_ConfigBase):
    """Prompt encoder configuration (HF `SamPromptEncoderConfig`)."""

    model_type = "sam_prompt_encoder"

    hidden_size: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        self.image_size = _to_pair(self.image_size)
        self.patch_size = _to_pair(self.patch_size)

    @property
    def image_embedding_size(self) -> int:
        """Side of the embedding grid the dense prompt must match."""
        return self.image_size // self.patch_size

    def to_dict(self):
        out = super().to_dict()
        out["image_embedding_size"] = self.image_embedding_size
        return out


@dataclasses.dataclass
class SamMaskDecoderConfig(_ConfigBase):
    """Two-way transformer and mask decoder configuration (HF `SamMaskDecoderConfig`)."""

    model_type = "sam_mask_decoder"

    hidden_size: int = 256
    hidden_act: str = "relu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        internal = self.hidden_size // self.attention_downsample_rate
        if self.hidden_size % self.num_attention_heads or internal % self.num_attention_heads:
            raise ValueError(
                f"mask decoder num_attention_heads={self.num_attention_heads} must divide "
                f"hidden_size={self.hidden_size} and hidden_size/attention_downsample_rate={internal}."
            )
        if self.hidden_size % 8:
            raise ValueError(
                f"mask decoder hidden_size={self.hidden_size} must be a multiple of 8 "
                "(the upscaler divides it by 4 then 8)."
            )


@dataclasses.dataclass
class SamConfig(_ConfigBase):
    """Full SAM configuration: vision encoder, prompt encoder and mask decoder.

    Reads and writes HF's `config.json`; `SamConfig.from_preset("sam-vit-base")` gives the
    published architectures.
    """

    model_type = "sam"

    vision_config: SamVisionConfig = dataclasses.field(default_factory=SamVisionConfig)
    prompt_encoder_config: SamPromptEncoderConfig = dataclasses.field(
        default_factory=SamPromptEncoderConfig
    )
    mask_decoder_config: SamMaskDecoderConfig = dataclasses.field(
        default_factory=SamMaskDecoderConfig
    )
    initializer_range: float = 0.02

    def __post_init__(self):
        if isinstance(self.vision_config, dict) or self.vision_config is None:
            self.vision_config = SamVisionConfig.from_dict(self.vision_config)
        if isinstance(self.prompt_encoder_config, dict) or self.prompt_encoder_config is None:
            self.prompt_encoder_config = SamPromptEncoderConfig.from_dict(self.prompt_encoder_config)
        if isinstance(self.mask_decoder_config, dict) or self.mask_decoder_config is None:
            self.mask_decoder_config = SamMaskDecoderConfig.from_dict(self.mask_decoder_config)
        self.validate()

    def validate(self):
        """Checks that the three parts agree on sizes; raises ValueError naming the fields."""
        v, p, d = self.vision_config, self.prompt_encoder_config, self.mask_decoder_config
        problems = []
        if v.output_channels != p.hidden_size:
            problems.append(
                f"vision_config.output_channels={v.output_channels} != "
                f"prompt_encoder_config.hidden_size={p.hidden_size}"
            )
        if p.hidden_size != d.hidden_size:
            problems.append(
                f"prompt_encoder_config.hidden_size={p.hidden_size} != "
                f"mask_decoder_config.hidden_size={d.hidden_size}"
            )
        if 2 * v.num_pos_feats != d.hidden_size:
            problems.append(
                f"2 * vision_config.num_pos_feats={2 * v.num_pos_feats} != "
                f"mask_decoder_config.hidden_size={d.hidden_size}"
            )
        if p.image_embedding_size != v.image_embedding_size:
            problems.append(
                f"prompt encoder embedding grid {p.image_embedding_size} != "
                f"vision embedding grid {v.image_embedding_size}"
            )
        if problems:
            raise ValueError("Inconsistent SamConfig: " + "; ".join(problems) + ".")

    def to_dict(self):
        out = super().to_dict()
        out["tie_word_embeddings"] = True
        return out

    def to_json_string(self) -> str:
        """Returns the config as HF-style indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Writes `config.json` into `directory`; returns the file path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        with open(path, "w") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "SamConfig":
        """Reads an HF `config.json`; raises ValueError if it is not a SAM config."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        model_type = data.get("model_type", "sam")
        if model_type != "sam":
            raise ValueError(f"{path} describes model_type={model_type!r}, expected 'sam'.")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "SamConfig":
        """Reads `config.json` from a local directory (or the file itself)."""
        path = directory
        if os.path.isdir(directory):
            path = os.path.join(directory, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No config.json found at {directory}.")
        return cls.from_json_file(path)

    @classmethod
    def from_preset(cls, name: str) -> "SamConfig":
        """Returns the architecture of a named model (see `PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}.")
        return cls(vision_config=SamVisionConfig(**PRESETS[name]))


# Architectures only; weights come from checkpoints. SlimSAM keeps SAM-B's depth and
# windows but prunes channels, hence the independent mlp_dim and odd head sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "sam-vit-base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        global_attn_indexes=(2, 5, 8, 11),
    ),
    "sam-vit-large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
    ),
    "sam-vit-huge": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
    ),
    "slimsam-50": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=12, mlp_dim=1536,
        global_attn_indexes=(2, 5, 8, 11),
    ),
    "slimsam-77": dict(
        hidden_size=168, num_hidden_layers=12, num_attention_heads=12, mlp_dim=696,
        global_attn_indexes=(2, 5, 8, 11),
    ),
}
