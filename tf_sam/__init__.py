"""tf_sam: Segment Anything in Keras 3 / TensorFlow, numerically matching the reference."""

__version__ = "0.1.0"

from tf_sam.checkpoint import CheckpointError
from tf_sam.config import PRESETS, SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig
from tf_sam.modeling import SamImageSegmentationOutput, SamModel, TFSamModel
from tf_sam.predictor import SamPredictor
from tf_sam.automatic_mask_generator import SamAutomaticMaskGenerator
from tf_sam.processing import SamImageProcessor, SamProcessor

__all__ = [
    "CheckpointError", "PRESETS", "SamAutomaticMaskGenerator", "SamConfig", "SamImageSegmentationOutput", "SamMaskDecoderConfig",
    "SamImageProcessor", "SamModel", "SamPredictor", "SamProcessor", "SamPromptEncoderConfig",
    "SamVisionConfig", "TFSamModel",
]
