"""SamPredictor: Meta's set-once, prompt-many API."""

import numpy as np
import pytest

import tf_sam
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def predictor():
    model = tf_sam.SamModel(tiny_config_dict())
    predictor = tf_sam.SamPredictor(model)
    image = (np.random.default_rng(0).random((150, 220, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    return predictor


def test_prompting_before_set_image_is_a_clear_error():
    predictor = tf_sam.SamPredictor(tf_sam.SamModel(tiny_config_dict()))
    with pytest.raises(RuntimeError, match=r"call set_image\(image\) before prompting"):
        predictor.predict(point_coords=[[1, 1]])
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()


def test_predict_shapes_and_agreement_with_processor_path(predictor):
    masks, scores, logits = predictor.predict(point_coords=[[50, 60], [100, 20]], point_labels=[1, 0])
    assert masks.shape == (3, 150, 220) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, 32, 32)
    # The same prompt through processor + model + post_process_masks gives the same result.
    model, processor = predictor.model, predictor.processor
    prompts = processor(original_sizes=[[150, 220]], input_points=[[[50, 60], [100, 20]]], input_labels=[[1, 0]],
                        return_tensors="np")
    out = model(image_embeddings=predictor.get_image_embedding(), input_points=prompts["input_points"],
                input_labels=prompts["input_labels"])
    np.testing.assert_allclose(scores, np.asarray(out.iou_scores)[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, np.asarray(out.pred_masks)[0, 0], rtol=1e-5, atol=1e-6)
    expected = processor.post_process_masks(out.pred_masks, prompts["original_sizes"], prompts["reshaped_input_sizes"])
    np.testing.assert_array_equal(masks, expected[0][0])


def test_low_res_logits_fed_back_refine_the_mask(predictor):
    _, scores, logits = predictor.predict(point_coords=[[50, 60]], point_labels=[1])
    best = logits[np.argmax(scores)][None]
    refined, refined_scores, refined_logits = predictor.predict(
        point_coords=[[50, 60]], point_labels=[1], mask_input=best, multimask_output=False
    )
    plain, _, plain_logits = predictor.predict(point_coords=[[50, 60]], point_labels=[1], multimask_output=False)
    assert refined.shape == (1, 150, 220) and refined_logits.shape == (1, 32, 32)
    assert np.abs(refined_logits - plain_logits).max() > 1e-4  # the mask prompt was used
    direct = predictor.model(image_embeddings=predictor.get_image_embedding(),
                             input_points=predictor.processor(original_sizes=[[150, 220]], input_points=[[[50, 60]]],
                                                              return_tensors="np")["input_points"],
                             input_labels=[[[1]]], input_masks=best, multimask_output=False)
    np.testing.assert_allclose(refined_logits, np.asarray(direct.pred_masks)[0, 0], rtol=1e-5, atol=1e-5)


def test_predict_batch_equals_one_by_one(predictor):
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, 140, (4, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, -1]])
    boxes = np.array([[10, 10, 100, 120], [0, 0, 219, 149], [50, 20, 60, 30], [5, 5, 200, 100]], float)
    masks, scores, logits = predictor.predict_batch(coords, labels, boxes)
    assert masks.shape == (4, 3, 150, 220) and scores.shape == (4, 3)
    for i in range(4):
        m, s, low = predictor.predict(coords[i], labels[i], boxes[i])
        np.testing.assert_allclose(s, scores[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(low, logits[i], rtol=1e-4, atol=1e-5)
    # Per-prompt mask inputs take the batched-image path and must agree too.
    refined = predictor.predict_batch(coords, labels, boxes, mask_input=logits[:, 0], multimask_output=False)
    single = predictor.predict(coords[2], labels[2], boxes[2], mask_input=logits[2, 0][None], multimask_output=False)
    np.testing.assert_allclose(refined[2][2], single[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(point_coords=[[300, 10]]), ValueError, r"outside the 220x150 image"),
        (dict(box=[0, 0, 10, 400]), ValueError, r"outside the 220x150 image"),
        (dict(point_coords=[10, 10]), ValueError, r"`point_coords` must have shape \(N, 2\)"),
        (dict(point_coords=[[10, 10]], point_labels=[1, 1]), ValueError, r"point_labels must have shape"),
        (dict(point_coords=[[np.nan, 10]]), ValueError, "NaN"),
        (dict(), ValueError, "at least one prompt"),
    ],
)
def test_bad_prompts(predictor, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        predictor.predict(**kwargs)


def test_reset_image():
    predictor = tf_sam.SamPredictor(tf_sam.SamModel(tiny_config_dict()))
    predictor.set_image(np.zeros((40, 30, 3), np.uint8))
    assert predictor.is_image_set and predictor.original_size == (40, 30)
    predictor.reset_image()
    assert not predictor.is_image_set


def test_varying_prompt_counts_do_not_retrace_forever():
    """After the first few shapes the decoder generalises instead of retracing per count."""
    predictor = tf_sam.SamPredictor(tf_sam.SamModel(tiny_config_dict()))
    predictor.set_image(np.zeros((60, 80, 3), np.uint8))
    rng = np.random.default_rng(0)
    for prompts, points in [(1, 1), (2, 1), (3, 2), (5, 3), (8, 1), (13, 4), (21, 2), (34, 5)]:
        predictor.predict_batch(rng.uniform(0, 50, (prompts, points, 2)))
    # Point prompts take the per-image cached decoder; mask prompts the plain one.
    assert predictor._decode_cached.experimental_get_tracing_count() <= 3
    assert predictor._decode.experimental_get_tracing_count() == 0
