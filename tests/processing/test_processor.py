"""SamProcessor: prompt nesting, padding and coordinate scaling exactly like HF's."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from tf_sam.processing import SamImageProcessor, SamProcessor

PROMPT_KEYS = ("original_sizes", "reshaped_input_sizes", "input_points", "input_labels", "input_boxes")


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hf_processor():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.SamProcessor(transformers.SamImageProcessor())


def hf_prompts(hf_processor, images, **prompts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_processor(images=images, return_tensors="pt", **prompts)
    return {k: v.numpy() for k, v in out.items() if k in PROMPT_KEYS}


def assert_prompts_equal(ours, ref):
    assert set(ref) <= set(ours), (sorted(ref), sorted(ours))
    for key in ref:
        assert ours[key].dtype == ref[key].dtype, key
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


IMAGES = {"landscape": (534, 800), "portrait": (1800, 1200), "thin": (37, 1000), "square": (512, 512)}

HF_PROMPTS = {
    "one-point": dict(input_points=[[[450.5, 300.25]]], input_labels=[[1]]),
    "two-points": dict(input_points=[[[500, 375], [33.3, 7.77]]], input_labels=[[1, 0]]),
    "points-no-labels": dict(input_points=[[[500, 375], [1, 2]]]),
    "several-masks": dict(input_points=[[[[10, 20]], [[30.5, 40]], [[0, 0]]]], input_labels=[[[1], [0], [1]]]),
    "one-box": dict(input_boxes=[[[425.1, 600.7, 700, 875.33]]]),
    "boxes": dict(input_boxes=[[[0, 0, 10, 10], [17.5, 54.38, 318.75, 469.38]]]),
    "points-and-box": dict(input_points=[[[100, 200]]], input_labels=[[1]], input_boxes=[[[1.5, 2, 300, 400]]]),
}


@pytest.mark.parametrize("prompt", HF_PROMPTS)
@pytest.mark.parametrize("size", IMAGES)
def test_prompts_equal_hf(hf_processor, prompt, size):
    image = _image(*IMAGES[size])
    ours = SamProcessor()(image, return_tensors="np", **HF_PROMPTS[prompt])
    assert_prompts_equal(ours, hf_prompts(hf_processor, image, **HF_PROMPTS[prompt]))


def test_batch_of_images_and_ragged_points_equal_hf(hf_processor):
    images = [_image(534, 800), _image(37, 1000, 1), _image(1800, 1200, 2)]
    prompts = dict(input_points=[[[1, 2], [3, 4]], [[5, 6], [7.5, 8]], [[9, 10]]], input_labels=[[1, 0], [1, 1], [0]],
                   input_boxes=[[[1, 2, 3, 4]], [[5, 6, 7, 8]], [[9.1, 10, 11, 12]]])
    ours = SamProcessor()(images, return_tensors="np", **prompts)
    ref = hf_prompts(hf_processor, images, **prompts)
    assert_prompts_equal(ours, ref)
    assert ours["input_points"].shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(ours["input_points"][2, 0, 1], [-10, -10])
    np.testing.assert_array_equal(ours["input_labels"][:, 0], [[1, 0], [1, 1], [0, -10]])


def test_tensor_and_array_prompts_equal_list_prompts(hf_processor):
    torch = pytest.importorskip("torch")
    image = _image(534, 800)
    points = [[[[10.0, 20.0], [30.0, 40.0]]]]
    labels = [[[1, 0]]]
    boxes = [[[1.0, 2.0, 3.0, 4.0]]]
    ref = hf_prompts(hf_processor, image, input_points=points, input_labels=labels, input_boxes=boxes)
    for convert in (np.array, tf.constant, torch.tensor, lambda x: [np.array(v) for v in x]):
        ours = SamProcessor()(image, input_points=convert(points), input_labels=convert(labels),
                              input_boxes=convert(boxes), return_tensors="np")
        assert_prompts_equal(ours, ref)


@pytest.mark.parametrize("short, full", [
    (dict(input_points=[500, 375]), dict(input_points=[[[500, 375]]])),
    (dict(input_points=[500, 375], input_labels=1), dict(input_points=[[[500, 375]]], input_labels=[[1]])),
    (dict(input_points=[[500, 375], [1125, 625]], input_labels=[1, 0]),
     dict(input_points=[[[500, 375], [1125, 625]]], input_labels=[[1, 0]])),
    (dict(input_points=np.array([[500, 375], [1125, 625]]), input_labels=np.array([1, 1])),
     dict(input_points=[[[500, 375], [1125, 625]]], input_labels=[[1, 1]])),
    (dict(input_boxes=[425, 600, 700, 875]), dict(input_boxes=[[[425, 600, 700, 875]]])),
    (dict(input_boxes=[[425, 600, 700, 875], [0, 0, 5, 5]]), dict(input_boxes=[[[425, 600, 700, 875], [0, 0, 5, 5]]])),
])
def test_simple_forms_equal_hf_nesting(hf_processor, short, full):
    image = _image(1200, 1800)
    ours = SamProcessor()(image, return_tensors="np", **short)
    assert_prompts_equal(ours, hf_prompts(hf_processor, image, **full))
    assert ours.get("input_points", np.zeros((1, 1, 1, 2))).ndim == 4
    assert ours.get("input_boxes", np.zeros((1, 1, 4))).ndim == 3


def test_ragged_padding_beyond_hf():
    """HF pads one missing point per image correctly; we pad any raggedness, masks included."""
    images = [_image(100, 200), _image(200, 100, 1)]
    out = SamProcessor()(images, input_points=[[[[1, 1], [2, 2], [3, 3]], [[4, 4]]], [[[5, 5]]]],
                         input_labels=[[[1, 1, 0], [1]], [[1]]], return_tensors="np")
    assert out.input_points.shape == (2, 2, 3, 2) and out.input_labels.shape == (2, 2, 3)
    np.testing.assert_array_equal(out.input_labels, [[[1, 1, 0], [1, -10, -10]], [[1, -10, -10], [-10] * 3]])
    np.testing.assert_array_equal(out.input_points[out.input_labels == -10], -10)
    np.testing.assert_allclose(out.input_points[0, 0, :, 0], [5.12, 10.24, 15.36])

    no_labels = SamProcessor()(images, input_points=[[[1, 1], [2, 2]], [[3, 3]]], return_tensors="np")
    np.testing.assert_array_equal(no_labels.input_labels, [[[1, 1]], [[1, -10]]])
    assert "input_labels" not in SamProcessor()(images, input_points=[[[1, 1]], [[3, 3]]], return_tensors="np")


def test_return_tensors_tf_dtypes():
    out = SamProcessor()(_image(60, 80), input_points=[[[1, 2]]], input_labels=[[1]], input_boxes=[[[1, 2, 3, 4]]])
    assert all(isinstance(v, tf.Tensor) for v in out.values())
    assert out.input_points.dtype == tf.float32 and out.input_boxes.dtype == tf.float32
    assert out.input_labels.dtype == tf.int64 and out.pixel_values.shape == (1, 1024, 1024, 3)
    np.testing.assert_allclose(out.input_points.numpy(), [[[[12.8, 25.6]]]], rtol=1e-6)


def test_prompts_only_with_original_sizes():
    processor = SamProcessor()
    prompts = dict(input_points=[[[10, 20]], [[30, 40]]], input_labels=[[1], [1]], input_boxes=[[[1, 2, 3, 4]]] * 2)
    full = processor([_image(534, 800), _image(37, 1000)], return_tensors="np", **prompts)
    only = processor(original_sizes=full.original_sizes, return_tensors="np", **prompts)
    assert "pixel_values" not in only
    for key in PROMPT_KEYS:
        np.testing.assert_array_equal(only[key], full[key])
    with pytest.raises(ValueError, match="original_sizes"):
        processor(input_points=[[[1, 2]]])


@pytest.mark.parametrize("prompts, message", [
    (dict(input_points=[[[[[1, 2]]]]]), r"5 nesting level.*\[image\]\[point\]\[xy\]"),
    (dict(input_points=[[[1, 2, 3]]]), r"needs 2 numbers, got 3.*\[image\]\[point\]\[xy\]"),
    (dict(input_points=[1, 2, 3]), "needs 2 numbers, got 3"),
    (dict(input_points=7), r"0 nesting level.*input_points=\[\[\[x, y\], \[x, y\]\]\]"),
    (dict(input_points=[[[1, 2], [3, 4]]], input_labels=[[1]]), r"does not match.*input_labels=\[\[1, 0\]\]"),
    (dict(input_points=[[[1, 2]]], input_labels=[[1, 1]]), "does not match"),
    (dict(input_points=[[[1, 2]]], input_labels=[[0.5]]), "whole numbers"),
    (dict(input_points=[[[1, 2], [3, float("nan")]]]), "NaN"),
    (dict(input_points=[[[1, 2], [3, float("inf")]]]), "infinite"),
    (dict(input_points=[[["a", 2]]]), "must contain numbers"),
    (dict(input_points=[[[1, 2], [3]]]), "needs 2 numbers, got 1"),
    (dict(input_points=[[[1, 2], 3]]), "mixes nesting"),
    (dict(input_points=[[]]), "empty list"),
    (dict(input_points=[[[1, 2]], [[3, 4]]]), r"prompts for 2 images but there are 1.*\[image\]\[mask\]"),
    (dict(input_labels=[[1]]), "without input_points"),
    (dict(input_boxes=[1, 2, 3]), r"needs 4 numbers, got 3.*\[image\]\[box\]\[xyxy\]"),
    (dict(input_boxes=[[[1, 2, 3, float("nan")]]]), "NaN"),
    (dict(input_boxes=[[[[1, 2, 3, 4]]]]), r"4 nesting level.*input_boxes=\[\[\[x0, y0, x1, y1\]"),
    (dict(input_boxes=[None]), "NoneType"),
])
def test_malformed_prompts_explain_the_nesting(prompts, message):
    with pytest.raises(ValueError, match=message):
        SamProcessor()(_image(40, 50), **prompts)


def test_batch_prompt_errors():
    images = [_image(40, 50), _image(50, 40, 1)]
    with pytest.raises(ValueError, match="only allowed for a single image"):
        SamProcessor()(images, input_points=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="same number of boxes"):
        SamProcessor()(images, input_boxes=[[[1, 2, 3, 4]], [[1, 2, 3, 4], [5, 6, 7, 8]]])
    with pytest.raises(ValueError, match="images\\[1\\]"):
        SamProcessor()([images[0], "not an image"])


def test_save_load_and_hf_interop(tmp_path, hf_processor):
    transformers = pytest.importorskip("transformers")
    processor = SamProcessor(SamImageProcessor.for_image_size(512))
    processor.save_pretrained(tmp_path / "ours")
    assert SamProcessor.from_pretrained(tmp_path / "ours").image_processor.to_dict() == \
        processor.image_processor.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.SamProcessor.from_pretrained(tmp_path / "ours")
        hf_processor.save_pretrained(tmp_path / "hf")
    assert theirs.image_processor.size["longest_edge"] == 512 and theirs.target_size == 512
    assert SamProcessor.from_pretrained(tmp_path / "hf").image_processor.to_dict() == SamImageProcessor().to_dict()


def test_for_model_512_end_to_end():
    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=512, patch_size=16)))
    processor = SamProcessor.for_model(model)
    out = processor(_image(534, 800), input_points=[[[400, 267]]], input_labels=[[1]], return_tensors="np")
    assert out.pixel_values.shape == (1, 512, 512, 3)
    np.testing.assert_array_equal(out.reshaped_input_sizes, [[342, 512]])
    np.testing.assert_array_equal(out.input_points, [[[[400 * (512 / 800), 267 * (342 / 534)]]]])
    logits = np.full((1, 1, 3, 128, 128), -1.0, np.float32)
    logits[..., :64, :] = 1.0  # top half of the padded frame = top 64/85.5 of the image
    masks = processor.post_process_masks(logits, out.original_sizes, out.reshaped_input_sizes)
    assert masks[0].shape == (1, 3, 534, 800)
    assert 0.70 < masks[0].mean() < 0.80
    assert isinstance(processor.image_processor, SamImageProcessor)


def test_docstring_examples_run():
    import doctest

    from tf_sam.processing import image_processor, processor

    for module in (image_processor, processor):
        assert doctest.testmod(module).failed == 0
