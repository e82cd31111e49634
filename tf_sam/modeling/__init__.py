"""SAM's components as Keras 3 layers (one file per component, as in Meta's `modeling/`)."""

from tf_sam.modeling.image_encoder import SamVisionEncoder
from tf_sam.modeling.mask_decoder import SamMaskDecoder
from tf_sam.modeling.prompt_encoder import SamPositionalEmbedding, SamPromptEncoder
from tf_sam.modeling.sam_model import SamImageSegmentationOutput, SamModel, TFSamModel
from tf_sam.modeling.transformer import SamTwoWayTransformer

__all__ = [
    "SamImageSegmentationOutput", "SamMaskDecoder", "SamModel", "SamPositionalEmbedding",
    "SamPromptEncoder", "SamTwoWayTransformer", "SamVisionEncoder", "TFSamModel",
]
