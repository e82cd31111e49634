"""SAM pre- and post-processing: `SamImageProcessor`, `SamProcessor` and the TF ops they share."""

from tf_sam.processing import image_ops
from tf_sam.processing.image_processor import BatchFeature, SamImageProcessor
from tf_sam.processing.processor import SamProcessor

__all__ = ["BatchFeature", "SamImageProcessor", "SamProcessor", "image_ops"]
