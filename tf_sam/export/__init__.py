"""Deployment: SavedModel for TF Serving and TFLite. TensorFlow-only code lives here."""

from tf_sam.export.saved_model import SamServingModule, export_saved_model
from tf_sam.export.tflite import FlexOpsError, convert_to_tflite, export_tflite

__all__ = ["FlexOpsError", "SamServingModule", "convert_to_tflite", "export_saved_model", "export_tflite"]
