"""tf_sam: Segment Anything in Keras 3 / TensorFlow, numerically matching the reference."""

__version__ = "0.1.0"

from tf_sam.checkpoint import CheckpointError
from tf_sam.config import PRESETS, SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig
from tf_sam.modeling import SamImageSegmentationOutput, SamModel, TFSamModel

__all__ = [
    "CheckpointError", "PRESETS", "SamConfig", "SamImageSegmentationOutput", "SamMaskDecoderConfig",
    "SamModel", "SamPromptEncoderConfig", "SamVisionConfig", "TFSamModel",
]
