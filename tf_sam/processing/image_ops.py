"""Graph-safe TensorFlow ops for SAM pre- and post-processing.

This module is the one place where resizing, rescaling, normalisation, padding, prompt
coordinate scaling and mask post-processing are written. Everything is plain TF ops on
tensors whose height and width may be unknown until run time, so `SamImageProcessor`
(eager) and an exported serving graph (`tf.function` with `[None, None, 3]` inputs) run
the very same code.

Layout is channels-last: images are `(H, W, C)`. Masks keep SAM's `(..., h, w)` layout.

Resizing reproduces Pillow 8-bit `Image.resize(..., BILINEAR)` bit for bit, because
Hugging Face's SAM image processor resizes with PIL: the same triangle filter widened
on downscale (antialiasing), the same fixed-point weights, the same rounding of the
intermediate image between the two separable passes, and the same pass order.
"""

import tensorflow as tf

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Pillow's 8-bit resampling uses 22-bit fixed-point weights (Resample.c PRECISION_BITS).
_PRECISION_BITS = 22


def _div(x, y):
    """`x / y`, correctly rounded in graphs too.

    Grappler rewrites `x / constant` as `x * (1 / constant)`, which can differ in the last
    bit from HF's and Pillow's division; it leaves DivNoNan alone (`y` is never 0 here).
    """
    return tf.math.divide_no_nan(x, y)


def get_preprocess_shape(height, width, longest_edge, dtype=tf.float64):
    """Size of an image after resizing its longest side to `longest_edge`, like HF.

    Matches `SamImageProcessor._get_preprocess_shape`: `int(side * scale + 0.5)` in
    float64. Sides are clamped to at least 1 pixel (HF fails on such extreme aspect ratios).

    Args:
        height, width: int scalars (Python or tensors), the original size.
        longest_edge: int scalar, target length of the longest side.
        dtype: float type of the arithmetic; float64 matches HF exactly, float32 is for
            runtimes without float64 (TFLite).

    Returns:
        `(new_height, new_width)`: two int32 scalar tensors.
    """
    h = tf.cast(height, dtype)
    w = tf.cast(width, dtype)
    scale = _div(tf.cast(longest_edge, dtype), tf.maximum(h, w))
    # A float -> int cast truncates, like Python's int() on positive numbers.
    new_h = tf.maximum(tf.cast(h * scale + 0.5, tf.int32), 1)
    new_w = tf.maximum(tf.cast(w * scale + 0.5, tf.int32), 1)
    return new_h, new_w


def _pil_bilinear_taps(in_size, out_size):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter.

    Returns `(index, weight)`, both `(out_size, K)` int32: output pixel `i` is
    `(sum_k in[index[i, k]] * weight[i, k] + 2**21) >> 22`, clipped to [0, 255].
    """
    in_f = tf.cast(in_size, tf.float64)
    scale = _div(in_f, tf.cast(out_size, tf.float64))
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the triangle's support (1.0) widened on downscale
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    # C's (int) truncates toward zero, and so does tf.cast.
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin
    taps = tf.range(ksize)
    position = tf.cast(taps[None, :] + xmin[:, None], tf.float64)
    inv_filterscale = _div(tf.constant(1.0, tf.float64), filterscale)
    weight = tf.maximum(1.0 - tf.abs((position - center[:, None] + 0.5) * inv_filterscale), 0.0)
    weight = tf.where(taps[None, :] < xmax[:, None], weight, 0.0)
    # Pillow sums left to right; cumsum does too, so the normaliser is bit-identical.
    total = tf.math.cumsum(weight, axis=1)[:, -1:]
    weight = _div(weight, total)  # Pillow skips all-zero rows; so does DivNoNan
    fixed = tf.cast(weight * float(1 << _PRECISION_BITS) + 0.5, tf.int32)
    index = tf.minimum(taps[None, :] + xmin[:, None], in_size - 1)  # unused taps have weight 0
    return index, fixed


def _pil_resample_axis(image, out_size, axis):
    """One separable Pillow bilinear pass over `axis` (0 or 1) of an int32 `(H, W, C)` image."""
    index, weight = _pil_bilinear_taps(tf.shape(image)[axis], out_size)
    weight_shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
    out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    acc = tf.fill(out_shape, tf.constant(1 << (_PRECISION_BITS - 1), tf.int32))

    # One gather per tap keeps memory at one output-sized image, not K of them.
    def body(k, acc):
        taps = tf.gather(image, index[:, k], axis=axis)
        return k + 1, acc + taps * tf.reshape(weight[:, k], weight_shape)

    _, acc = tf.while_loop(lambda k, _: k < tf.shape(index)[1], body, (tf.constant(0), acc))
    return tf.clip_by_value(tf.bitwise.right_shift(acc, _PRECISION_BITS), 0, 255)


def pil_bilinear_resize(image, height, width):
    """Resize a uint8 image exactly like Pillow's `Image.resize((width, height), BILINEAR)`.

    Args:
        image: `(H, W, C)` uint8 tensor (any C).
        height, width: int scalars, the output size.

    Returns:
        `(height, width, C)` uint8 tensor, bit-identical to Pillow 8-bit resampling.
    """
    image = tf.convert_to_tensor(image)
    in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    x = tf.cast(image, tf.int32)

    def horizontal(t):
        return tf.cond(width != in_w, lambda: _pil_resample_axis(t, width, 1), lambda: t)

    def vertical(t):
        return tf.cond(height != in_h, lambda: _pil_resample_axis(t, height, 0), lambda: t)

    # Pillow goes vertical-first only when the height shrinks more than twice as much as
    # the width; the order matters because the intermediate image is rounded to uint8.
    vertical_first = tf.logical_and(in_h - height > 0, in_h - height > (in_w - width) * 2)
    x = tf.cond(vertical_first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return tf.cast(x, tf.uint8)


def pil_nearest_resize(image, height, width):
    """Resize like Pillow's `Image.resize((width, height), NEAREST)` (used for label maps).

    Pillow picks source index `int(x0 + k * scale)` with `x0 = scale / 2`, accumulated by
    repeated float64 additions; the cumulative sum below reproduces that sequence.

    Args:
        image: `(H, W)` or `(H, W, C)` tensor of any dtype.
        height, width: int scalars, the output size.

    Returns:
        Tensor of the same dtype, `(height, width)` or `(height, width, C)`.
    """
    image = tf.convert_to_tensor(image)

    def source_index(in_size, out_size):
        step = _div(tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64))
        steps = tf.concat([[step * 0.5], tf.fill([tf.cast(out_size, tf.int32) - 1], step)], axis=0)
        return tf.minimum(tf.cast(tf.math.cumsum(steps), tf.int32), in_size - 1)

    rows = source_index(tf.shape(image)[0], height)
    cols = source_index(tf.shape(image)[1], width)
    return tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)


def resize_longest_side(image, longest_edge):
    """Resize a uint8 image so its longest side is `longest_edge` (Pillow bilinear, like HF).

    Args:
        image: `(H, W, C)` uint8 tensor.
        longest_edge: int scalar.

    Returns:
        `(resized, size)`: the `(h, w, C)` uint8 image and its `(2,)` int32 size `[h, w]`.
    """
    image = tf.convert_to_tensor(image)
    new_h, new_w = get_preprocess_shape(tf.shape(image)[0], tf.shape(image)[1], longest_edge)
    return pil_bilinear_resize(image, new_h, new_w), tf.stack([new_h, new_w])


def rescale(image, factor):
    """`image * factor` computed in float64 and returned as float32, like HF's `rescale`.

    Args:
        image: tensor of any real dtype and shape.
        factor: float, e.g. 1/255.

    Returns:
        float32 tensor of the same shape.
    """
    return tf.cast(tf.cast(image, tf.float64) * factor, tf.float32)


def normalize(image, mean, std):
    """`(image - mean) / std` per channel in float32, like HF's `normalize`.

    Args:
        image: `(..., C)` tensor.
        mean, std: length-C sequences (or scalars).

    Returns:
        float32 tensor of the same shape.
    """
    image = tf.cast(image, tf.float32)
    return _div(image - tf.constant(mean, tf.float32), tf.constant(std, tf.float32))


def pad_image(image, height, width, value=0):
    """Pad at the bottom and right to `(height, width)`, like HF's SAM processor.

    Args:
        image: `(h, w)` or `(h, w, C)` tensor with `h <= height`, `w <= width`.
        height, width: int scalars, the padded size.
        value: fill value (0 in normalised space for images, 0 for labels).

    Returns:
        `(height, width)` or `(height, width, C)` tensor of the input dtype.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    pad = [[0, tf.cast(height, tf.int32) - shape[0]], [0, tf.cast(width, tf.int32) - shape[1]]]
    pad += [[0, 0]] * (image.shape.rank - 2)
    return tf.pad(image, pad, constant_values=tf.cast(value, image.dtype))


def preprocess_image(
    image,
    longest_edge=1024,
    pad_size=(1024, 1024),
    rescale_factor=1 / 255,
    image_mean=IMAGENET_DEFAULT_MEAN,
    image_std=IMAGENET_DEFAULT_STD,
):
    """SAM's default image pipeline for one uint8 RGB image: resize, rescale, normalize, pad.

    This is what `SamImageProcessor` does with its default flags; serving graphs can call
    it directly on a decoded image.

    Args:
        image: `(H, W, 3)` uint8 tensor.
        longest_edge: int, length of the resized longest side.
        pad_size: `(height, width)` of the padded output.
        rescale_factor, image_mean, image_std: as in `SamImageProcessor`.

    Returns:
        `(pixel_values, reshaped_size)`: `(pad_h, pad_w, 3)` float32 and `(2,)` int32.
    """
    resized, size = resize_longest_side(image, longest_edge)
    pixels = normalize(rescale(resized, rescale_factor), image_mean, image_std)
    return pad_image(pixels, pad_size[0], pad_size[1]), size


def scale_coordinates(coords, original_size, new_size, dtype=tf.float64):
    """Map `(x, y)` coordinates from the original image frame to the resized one, like HF.

    x is multiplied by `new_w / old_w` and y by `new_h / old_h` in float64, exactly as
    HF's `SamProcessor._normalize_coordinates` does.

    Args:
        coords: `(..., 2)` array of `(x, y)` pairs; boxes `(..., 4)` should be reshaped to
            `(..., 2, 2)` first.
        original_size: `(2,)` `[old_h, old_w]`.
        new_size: `(2,)` `[new_h, new_w]` (e.g. from `get_preprocess_shape`).
        dtype: float type of the arithmetic (float64 matches HF; float32 for TFLite).

    Returns:
        `dtype` tensor shaped like `coords`.
    """
    old = tf.cast(original_size, dtype)
    new = tf.cast(new_size, dtype)
    factors = tf.stack([_div(new[1], old[1]), _div(new[0], old[0])])
    return tf.cast(coords, dtype) * factors


def bilinear_resize_matrix(in_size, out_size):
    """`(out_size, in_size)` float32 matrix of torch's bilinear interpolation along one axis.

    Row `i` holds the weights `F.interpolate(mode="bilinear", align_corners=False)` gives
    output pixel `i`: source `(i + 0.5) * in/out - 0.5` clamped at 0, two taps, computed
    in float32 like torch's CPU kernel. No antialiasing.

    Args:
        in_size, out_size: int scalars.

    Returns:
        `(out_size, in_size)` float32 tensor.
    """
    in_size = tf.cast(in_size, tf.int32)
    scale = _div(tf.cast(in_size, tf.float32), tf.cast(out_size, tf.float32))
    source = tf.maximum((tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale - 0.5, 0.0)
    lower = tf.cast(source, tf.int32)
    upper = tf.minimum(lower + 1, in_size - 1)
    frac = source - tf.cast(lower, tf.float32)
    return (tf.one_hot(lower, in_size) * (1.0 - frac)[:, None]
            + tf.one_hot(upper, in_size) * frac[:, None])


def postprocess_masks(masks, original_size, reshaped_size, pad_size, mask_threshold=0.0, binarize=True):
    """Upscale one image's low-resolution mask logits to its original size, like HF.

    Equivalent to HF's per-image steps: bilinear upsample to `pad_size`, crop the
    `reshaped_size` corner, bilinear resize to `original_size`, then `> mask_threshold`.
    Both resizes are linear and separable, so each axis's two steps are folded into one
    `(out, in)` matrix and applied as two matmuls: no padded-size (1024x1024) intermediate
    is ever built.

    Args:
        masks: `(..., h, w)` float logits, e.g. `(point_batch, num_masks, 256, 256)`.
        original_size: `(2,)` `[H, W]` of the original image.
        reshaped_size: `(2,)` `[h_r, w_r]` of the resized image before padding.
        pad_size: `(2,)` `[pad_h, pad_w]` the model input was padded to.
        mask_threshold: float, threshold on the logits.
        binarize: whether to return booleans `> mask_threshold` instead of logits.

    Returns:
        `(..., H, W)` bool tensor if `binarize`, else float32.
    """
    masks = tf.cast(masks, tf.float32)
    shape = tf.shape(masks)
    h, w = shape[-2], shape[-1]
    original_size = tf.cast(original_size, tf.int32)
    reshaped_size = tf.cast(reshaped_size, tf.int32)
    pad_size = tf.cast(pad_size, tf.int32)

    def axis_matrix(low, pad, reshaped, original):
        # Only the low-res cells under the kept corner have weight (the rest are padding):
        # dropping the all-zero columns shrinks both matmuls (by ~1/3 on a 3:2 photo).
        used = tf.minimum(low, tf.cast(tf.math.ceil(_div(
            tf.cast(reshaped * low, tf.float32), tf.cast(pad, tf.float32))), tf.int32) + 1)
        to_padded = bilinear_resize_matrix(low, pad)[:reshaped, :used]
        return tf.matmul(bilinear_resize_matrix(reshaped, original), to_padded), used

    rows, used_h = axis_matrix(h, pad_size[0], reshaped_size[0], original_size[0])  # (H, used_h)
    cols, used_w = axis_matrix(w, pad_size[1], reshaped_size[1], original_size[1])  # (W, used_w)
    flat = tf.reshape(masks, tf.stack([-1, h, w]))[:, :used_h, :used_w]
    out = tf.matmul(rows[None], tf.matmul(flat, cols, transpose_b=True))
    out = tf.reshape(out, tf.concat([shape[:-2], original_size], axis=0))
    return out > mask_threshold if binarize else out
