"""Checkpoint reading (HF, Meta, our own) and conversion."""

from tf_sam.checkpoint.loading import CheckpointError, load_pretrained, save_pretrained

__all__ = ["CheckpointError", "load_pretrained", "save_pretrained"]
