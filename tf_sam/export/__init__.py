"""Deployment: SavedModel for TF Serving (and, later, TFLite). TensorFlow-only code lives here."""

from tf_sam.export.saved_model import SamServingModule, export_saved_model

__all__ = ["SamServingModule", "export_saved_model"]
