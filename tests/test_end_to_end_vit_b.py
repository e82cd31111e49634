"""Photo -> processor -> ViT-B -> post-processing, against HF's PyTorch pipeline."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import mask_iou, require_shared_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tf_sam  # noqa: E402

pytestmark = pytest.mark.slow


def test_truck_point_and_box_match_hf_pipeline(hf_vit_b):
    hf_model, directory = hf_vit_b
    photo = Image.open(require_shared_image("sam_truck.jpg")).convert("RGB")
    # SAM's notebook prompts: a window click, and a box around the front tyre.
    prompts = dict(input_points=[[[500, 375]]], input_labels=[[1]], input_boxes=[[[425, 600, 700, 875]]])

    hf_processor = transformers.SamProcessor(transformers.SamImageProcessor())
    hf_inputs = hf_processor(images=photo, return_tensors="pt", **prompts)
    with torch.no_grad():
        hf_out = hf_model(**{k: v for k, v in hf_inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")})
    hf_masks = hf_processor.post_process_masks(
        hf_out.pred_masks, hf_inputs["original_sizes"], hf_inputs["reshaped_input_sizes"]
    )[0].numpy()

    model = tf_sam.SamModel.from_pretrained(directory)
    processor = tf_sam.SamProcessor.for_model(model)
    inputs = processor(photo, return_tensors="np", **prompts)
    out = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
                input_labels=inputs["input_labels"], input_boxes=inputs["input_boxes"])
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]

    assert masks.shape == hf_masks.shape == (1, 3, 1200, 1800)
    np.testing.assert_allclose(np.asarray(out.iou_scores), hf_out.iou_scores.numpy(), atol=1e-3)
    ious = [mask_iou(masks[0, i], hf_masks[0, i]) for i in range(3)]
    print("mask IoU vs HF:", ious, "areas:", masks.reshape(3, -1).sum(1))
    assert min(ious) >= 0.98
    # Random weights still give non-trivial masks; an all-empty pair would make IoU meaningless.
    assert all(0 < m.sum() < m.size for m in hf_masks[0])
