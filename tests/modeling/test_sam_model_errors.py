"""Bad inputs raise ValueError naming the argument, the shape received and the one expected."""

import numpy as np
import pytest

import tf_sam
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def model():
    return tf_sam.SamModel(tiny_config_dict())


def _pixels(*shape):
    return np.zeros(shape, "float32")


EMB = np.zeros((1, 8, 8, 16), "float32")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(pixel_values=_pixels(64, 64, 3)), r"`pixel_values` must have rank 4 \(batch, 64, 64, 3\), got shape \(64, 64, 3\)"),
        (dict(pixel_values=_pixels(1, 3, 64, 64)), r"channels-last .* got shape \(1, 3, 64, 64\)\. It looks channels-first"),
        (dict(pixel_values=_pixels(1, 32, 32, 3)), r"`pixel_values` must be \(batch, 64, 64, 3\)"),
        (dict(), r"exactly one of `pixel_values` .* got neither"),
        (dict(pixel_values=_pixels(1, 64, 64, 3), image_embeddings=EMB), r"got both"),
        (dict(image_embeddings=np.zeros((1, 16, 8, 8), "float32")), r"`image_embeddings` must have shape \(batch, 8, 8, 16\), got \(1, 16, 8, 8\)\. It looks channels-first"),
        (dict(image_embeddings=EMB, input_points=np.zeros((1, 1, 2), "float32")), r"`input_points` must have shape \(batch, point_batch, num_points, 2\), got \(1, 1, 2\)"),
        (dict(image_embeddings=EMB, input_points=np.zeros((1, 1, 1, 3), "float32")), r"`input_points` .* got \(1, 1, 1, 3\)"),
        (dict(image_embeddings=EMB, input_labels=np.ones((1, 1, 1))), r"`input_labels` was given without `input_points`"),
        (dict(image_embeddings=EMB, input_points=np.zeros((1, 1, 2, 2), "float32"), input_labels=np.ones((1, 1, 3))), r"`input_labels` must have shape \(1, 1, 2\) .* got \(1, 1, 3\)"),
        (dict(image_embeddings=EMB, input_points=np.zeros((2, 1, 1, 2), "float32")), r"`input_points` has batch size 2 .* images have batch size 1"),
        (dict(image_embeddings=EMB, input_boxes=np.zeros((1, 4), "float32")), r"`input_boxes` must have shape \(batch, num_boxes, 4\), got \(1, 4\)"),
        (dict(image_embeddings=EMB, input_points=np.zeros((1, 2, 1, 2), "float32"), input_boxes=np.zeros((1, 3, 4), "float32")), r"point_batch \(2\) must equal `input_boxes` num_boxes \(3\)"),
        (dict(image_embeddings=EMB, input_masks=np.zeros((1, 256, 256), "float32")), r"`input_masks` must have shape \(batch, 32, 32\), got \(1, 256, 256\)"),
        (dict(image_embeddings=EMB, input_points=np.zeros((1, 1, 1, 2), "float32"), input_labels=np.array([[[0.5]]])), r"`input_labels` must hold integer labels"),
    ],
)
def test_bad_inputs(model, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        model(**kwargs)


def test_no_prompt_at_all_still_predicts(model):
    """HF allows an image with no prompt (one output per image); so do we."""
    out = model(image_embeddings=EMB)
    assert tuple(out.iou_scores.shape) == (1, 1, 3)
    assert tuple(out.pred_masks.shape) == (1, 1, 3, 32, 32)


def test_output_object_behaves_like_hf(model):
    out = model(image_embeddings=EMB, input_points=np.zeros((1, 2, 1, 2), "float32"), multimask_output=False)
    assert tuple(out.pred_masks.shape) == (1, 2, 1, 32, 32)
    assert out.vision_hidden_states is None
    assert set(out) == {"iou_scores", "pred_masks"}
    assert out.to_tuple()[0] is out["iou_scores"]


def test_decoder_cache_misuse_is_a_clear_error(model):
    cache = model.get_decoder_cache(EMB)
    points = np.zeros((1, 1, 1, 2), "float32")
    with pytest.raises(ValueError, match=r"`decoder_cache` must be the dict returned by `get_decoder_cache"):
        model.decode_with_cache({"image_embeddings": EMB}, input_points=points)
    with pytest.raises(ValueError, match=r"Give `input_points` or `input_boxes`"):
        model.decode_with_cache(cache)
    with pytest.raises(ValueError, match=r"`input_points` has batch size 2 .* images have batch size 1"):
        model.decode_with_cache(cache, input_points=np.zeros((2, 1, 1, 2), "float32"))
    with pytest.raises(ValueError, match=r"`image_embeddings` must have shape \(batch, 8, 8, 16\)"):
        model.get_decoder_cache(np.zeros((1, 16, 8, 8), "float32"))
