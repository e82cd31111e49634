"""Fine-tuning SAM: losses, metrics, prompt sampling, datasets, freezing/LoRA and `fit` support."""

from tf_sam.training.datasets import (
    DatasetError, Example, build_datasets, image_dataset, list_coco_examples, list_folder_examples,
    prompt_dataset, sampler_for, split_examples,
)
from tf_sam.training.freezing import (
    cache_image_embeddings, enable_lora, freeze, trainable_summary,
)
from tf_sam.training.losses import (
    SamLoss, dice_loss, iou_mse_loss, mask_iou, sam_loss, sam_loss_terms, sigmoid_focal_loss,
)
from tf_sam.training.metrics import MaskMeanIoU, evaluate_mean_iou, select_masks
from tf_sam.training.model_mixin import SamTrainingMixin
from tf_sam.training.prompts import PromptSampler, sample_error_points
from tf_sam.training.schedules import warmup_schedule

__all__ = [
    "DatasetError", "Example", "MaskMeanIoU", "PromptSampler", "SamLoss", "SamTrainingMixin", "build_datasets",
    "cache_image_embeddings", "dice_loss", "enable_lora", "evaluate_mean_iou", "freeze", "image_dataset",
    "iou_mse_loss", "list_coco_examples", "list_folder_examples", "mask_iou", "prompt_dataset", "sam_loss",
    "sam_loss_terms", "sample_error_points", "sampler_for", "select_masks", "sigmoid_focal_loss",
    "split_examples", "trainable_summary", "warmup_schedule",
]
