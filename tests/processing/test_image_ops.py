"""The TF ops behind the processors: Pillow-exact resizing, graph safety, mask upscaling."""

import numpy as np
import pytest
import tensorflow as tf

from tf_sam.processing import image_ops as ops

Image = pytest.importorskip("PIL.Image")

# (input HxW, output HxW): up/downscale, one-pixel sides, identity, a height shrinking more
# than twice as much as the width (Pillow then runs the vertical pass first), odd ratios.
RESIZE_CASES = [
    ((512, 512), (1024, 1024)), ((1200, 1800), (683, 1024)), ((37, 1000), (38, 1024)), ((1000, 37), (1024, 38)),
    ((300, 10), (30, 10)), ((300, 40), (20, 39)), ((5, 7), (3, 2)), ((1, 1), (5, 9)), ((1, 9), (1, 3)),
    ((64, 64), (64, 64)), ((257, 129), (256, 128)), ((99, 1), (7, 1)),
]


def _smooth_image(height, width, seed=0):
    """Random image with both smooth regions and sharp edges, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    base = np.array(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int32)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("in_size, out_size", RESIZE_CASES)
def test_pil_bilinear_resize_is_bit_exact(in_size, out_size):
    image = _smooth_image(*in_size)
    expected = np.array(Image.fromarray(image).resize(out_size[::-1], Image.BILINEAR))
    got = ops.pil_bilinear_resize(image, *out_size).numpy()
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_pil_bilinear_resize_random_sizes_bit_exact():
    rng = np.random.default_rng(1)
    for i in range(15):
        in_size = tuple(int(v) for v in rng.integers(1, 300, 2))
        out_size = tuple(int(v) for v in rng.integers(1, 400, 2))
        image = rng.integers(0, 256, (*in_size, 3), dtype=np.uint8)
        expected = np.array(Image.fromarray(image).resize(out_size[::-1], Image.BILINEAR))
        np.testing.assert_array_equal(ops.pil_bilinear_resize(image, *out_size).numpy(), expected,
                                      err_msg=f"{in_size} -> {out_size}")


@pytest.mark.parametrize("in_size, out_size", RESIZE_CASES + [((533, 498), (256, 239)), ((480, 640), (192, 256))])
def test_pil_nearest_resize_is_exact(in_size, out_size):
    labels = np.random.default_rng(2).integers(0, 256, in_size, dtype=np.uint8)
    expected = np.array(Image.fromarray(labels).resize(out_size[::-1], Image.NEAREST))
    np.testing.assert_array_equal(ops.pil_nearest_resize(labels, *out_size).numpy(), expected)


def test_get_preprocess_shape_matches_hf_formula():
    def hf_shape(h, w, longest):  # transformers' SamImageProcessor._get_preprocess_shape
        scale = longest * 1.0 / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    rng = np.random.default_rng(3)
    sizes = [(534, 800), (1200, 1800), (37, 1000), (1000, 37), (770, 769), (1, 1), (3000, 2000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(200)]
    for longest in (1024, 512, 256):
        for h, w in sizes:
            expected = tuple(max(1, v) for v in hf_shape(h, w, longest))
            got = tuple(int(v) for v in ops.get_preprocess_shape(h, w, longest))
            assert got == expected, (h, w, longest)
    # A 1x5000 image would get a 0-pixel side in HF; we keep one pixel.
    assert [int(v) for v in ops.get_preprocess_shape(1, 5000, 1024)] == [1, 1024]


def test_rescale_normalize_pad_values():
    image = tf.constant([[[0, 255, 51]]], tf.uint8)
    pixels = ops.normalize(ops.rescale(image, 1 / 255), (0.5, 0.5, 0.2), (0.5, 0.25, 0.2))
    np.testing.assert_allclose(pixels.numpy(), [[[-1.0, 2.0, 0.0]]], atol=1e-6)
    padded = ops.pad_image(pixels, 3, 2)
    assert padded.shape == (3, 2, 3)
    np.testing.assert_array_equal(padded.numpy()[1:], 0)
    np.testing.assert_array_equal(ops.pad_image(tf.ones((2, 2), tf.int64), 2, 4).numpy(), [[1, 1, 0, 0]] * 2)


def test_scale_coordinates_float64():
    coords = np.array([[100.0, 50.0], [7.0, 3.0]])
    scaled = ops.scale_coordinates(coords, [534, 800], [684, 1024]).numpy()
    assert scaled.dtype == np.float64
    np.testing.assert_array_equal(scaled, coords * np.array([1024 / 800, 684 / 534]))


def test_ops_are_graph_safe_with_dynamic_sizes():
    preprocess = tf.function(ops.preprocess_image, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    postprocess = tf.function(
        lambda m, o, r: ops.postprocess_masks(m, o, r, [1024, 1024]),
        input_signature=[tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([2], tf.int32),
                         tf.TensorSpec([2], tf.int32)],
    )
    rng = np.random.default_rng(4)
    for size in [(480, 640), (1300, 200), (50, 50)]:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        graph_pixels, graph_size = preprocess(image)
        eager_pixels, eager_size = ops.preprocess_image(image)
        np.testing.assert_array_equal(graph_pixels.numpy(), eager_pixels.numpy())
        np.testing.assert_array_equal(graph_size.numpy(), eager_size.numpy())
        masks = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
        graph_masks = postprocess(masks, size, graph_size)
        eager_masks = ops.postprocess_masks(masks, size, graph_size, [1024, 1024])
        assert graph_masks.shape == (2, 3, *size)
        np.testing.assert_array_equal(graph_masks.numpy(), eager_masks.numpy())
    assert preprocess.experimental_get_tracing_count() == 1
    assert postprocess.experimental_get_tracing_count() == 1


def test_graphs_with_static_sizes_stay_exact():
    """Constant sizes let Grappler rewrite divisions; the results must not move by a bit."""
    image = _smooth_image(300, 40, seed=7)
    resize = tf.function(lambda x: ops.pil_bilinear_resize(x, 20, 39))
    expected = np.array(Image.fromarray(image).resize((39, 20), Image.BILINEAR))
    np.testing.assert_array_equal(resize(tf.constant(image)).numpy(), expected)
    pixels = ops.rescale(_smooth_image(64, 48, seed=8), 1 / 255)
    normalize = tf.function(lambda x: ops.normalize(x, ops.IMAGENET_DEFAULT_MEAN, ops.IMAGENET_DEFAULT_STD))
    mean, std = np.float32(ops.IMAGENET_DEFAULT_MEAN), np.float32(ops.IMAGENET_DEFAULT_STD)
    np.testing.assert_array_equal(normalize(pixels).numpy(), (pixels.numpy() - mean) / std)
    coords = np.array([[123.25, 77.5]])
    scale = tf.function(lambda c: ops.scale_coordinates(c, [534, 800], [684, 1024]))
    np.testing.assert_array_equal(scale(coords).numpy(), coords * np.array([1024 / 800, 684 / 534]))


def test_postprocess_masks_equals_resize_crop_resize():
    """The folded matrices equal the literal three steps done with tf.image.resize."""
    rng = np.random.default_rng(5)
    masks = rng.normal(size=(3, 64, 64)).astype(np.float32)
    original, reshaped, pad = (300, 170), (256, 145), (256, 256)
    step = tf.image.resize(np.moveaxis(masks, 0, -1), pad, method="bilinear")[: reshaped[0], : reshaped[1]]
    expected = np.moveaxis(tf.image.resize(step, original, method="bilinear").numpy(), -1, 0)
    got = ops.postprocess_masks(masks, original, reshaped, pad, binarize=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    binary = ops.postprocess_masks(masks, original, reshaped, pad, mask_threshold=0.5).numpy()
    assert binary.dtype == bool
    np.testing.assert_array_equal(binary, got > 0.5)


def test_bilinear_resize_matrix_matches_torch():
    torch = pytest.importorskip("torch")
    for in_size, out_size in [(256, 1024), (1024, 37), (683, 1800), (5, 3), (64, 64)]:
        signal = np.random.default_rng(6).normal(size=in_size).astype(np.float32)
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(signal)[None, None, :, None], (out_size, 1), mode="bilinear", align_corners=False
        ).numpy()[0, 0, :, 0]
        got = ops.bilinear_resize_matrix(in_size, out_size).numpy() @ signal
        np.testing.assert_allclose(got, expected, atol=1e-5)
