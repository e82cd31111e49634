"""Helpers for automatic mask generation: point grids, crops, filtering, NMS, RLE, cleanup.

Two families live here:

* Meta-style building blocks (`build_point_grid`, `generate_crop_boxes_xyxy`,
  `calculate_stability_score`, `batched_mask_to_box`, `is_box_near_crop_edge`,
  `uncrop_*`, `mask_to_rle`, `rle_to_mask`, `coco_encode_rle`, `remove_small_regions`, ...)
  used by `SamAutomaticMaskGenerator`.
* Hugging Face-compatible functions with the signatures and return conventions of
  `transformers.SamImageProcessor` (`generate_crop_boxes`, `filter_masks`,
  `post_process_for_mask_generation`), returning TF tensors where HF returns torch ones.

Masks are `(..., H, W)`; boxes are XYXY in pixels unless a name says XYWH. Everything runs
on numpy and TensorFlow only (no OpenCV, SciPy or torchvision). pycocotools is used for
compressed RLE when installed; otherwise the same string format is produced here.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import tensorflow as tf

# --------------------------------------------------------------------------- point grids


def build_point_grid(n_per_side):
    """Evenly spaced points in the unit square, cell-centred like Meta's and HF's.

    Args:
        n_per_side: int, points along each side.

    Returns:
        `(n_per_side**2, 2)` float64 array of `(x, y)` in `[0, 1]`, x varying fastest.
    """
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side, n_layers, scale_per_layer):
    """One grid per crop layer; layer `i` has `int(n_per_side / scale_per_layer**i)` points a side.

    Returns:
        list of `n_layers + 1` arrays `(n_i**2, 2)` in `[0, 1]`.
    """
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


# --------------------------------------------------------------------------- crops


def generate_crop_boxes_xyxy(im_size, n_layers, overlap_ratio):
    """Meta's crop boxes: the whole image, then `(2**i)**2` overlapping crops in layer `i`.

    Args:
        im_size: `(H, W)` of the image.
        n_layers: int, number of crop layers after the full image.
        overlap_ratio: float, overlap of first-layer crops as a fraction of the short side.

    Returns:
        `(crop_boxes, layer_idxs)`: a list of `[x0, y0, x1, y1]` int boxes and their layers.
    """
    crop_boxes, layer_idxs = [], []
    im_h, im_w = (int(v) for v in im_size)
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        # x-major order, as Meta and HF enumerate them.
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def _resized_side_scale(target_size, height, width):
    """`(new_w / W, new_h / H)` of HF's longest-side resize (rounding as `int(x + 0.5)`)."""
    scale = target_size * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    return new_w / width, new_h / height


def _to_hwc_uint8(image):
    """PIL image or `(H, W, 3)` / `(3, H, W)` / `(H, W)` array -> `(H, W, 3)` array."""
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3:
        raise ValueError(f"Expected one image (H, W, 3), got an array of shape {array.shape}.")
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels-first, as HF's processor hands it over
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def generate_crop_boxes(image, target_size, crop_n_layers=0, overlap_ratio=512 / 1500, points_per_crop=32,
                        crop_n_points_downscale_factor=1, device=None):
    """HF's `SamImageProcessor.generate_crop_boxes`, returning TF tensors.

    Args:
        image: one PIL image or `(H, W, 3)` array (channels-first `(3, H, W)` is accepted).
        target_size: int, the processor's `longest_edge` (points are scaled to that frame).
        crop_n_layers: int, crop layers after the full image.
        overlap_ratio: float, first-layer crop overlap as a fraction of the short side.
        points_per_crop: int, grid points per side in layer 0.
        crop_n_points_downscale_factor: int, layer `i` uses `points_per_crop / factor**i` a side.
        device: ignored (kept for HF's signature).

    Returns:
        `(crop_boxes, points_per_crop, cropped_images, input_labels)`:
        `crop_boxes (n_crops, 4)` float32 XYXY; `points_per_crop (1, n_points, n_crops, 2)`
        float64 in each crop's resized-input frame; `cropped_images`, a list of `(h, w, 3)`
        numpy crops (channels-last, unlike HF's channels-first); `input_labels
        (1, n_points, n_crops)` int64 ones. As in HF, every layer must have the same number
        of points (a downscale factor above 1 with crop layers raises).
    """
    del device
    image = _to_hwc_uint8(image)
    grids = build_all_layer_point_grids(points_per_crop, crop_n_layers, crop_n_points_downscale_factor)
    crop_boxes, layer_idxs = generate_crop_boxes_xyxy(image.shape[:2], crop_n_layers, overlap_ratio)
    cropped_images, points = [], []
    for (x0, y0, x1, y1), layer in zip(crop_boxes, layer_idxs):
        crop = image[y0:y1, x0:x1]
        cropped_images.append(crop)
        h, w = crop.shape[:2]
        sx, sy = _resized_side_scale(target_size, h, w)
        pts = grids[layer] * np.array([[w, h]], np.float64)
        points.append(pts * np.array([[sx, sy]]))
    if len({len(p) for p in points}) > 1:
        raise ValueError("Every crop layer must have the same number of points (crop_n_points_downscale_factor=1).")
    points = np.transpose(np.array([points]), (0, 2, 1, 3))
    labels = np.ones(points.shape[:3], np.int64)
    return (tf.constant(np.array(crop_boxes, np.float32)), tf.constant(points, tf.float64), cropped_images,
            tf.constant(labels))


def uncrop_boxes_xyxy(boxes, crop_box):
    """Shift `(N, 4)` XYXY boxes from a crop's frame to the image's (numpy or TF, same type back)."""
    x0, y0 = crop_box[0], crop_box[1]
    offset = np.array([x0, y0, x0, y0])
    if isinstance(boxes, tf.Tensor):
        return boxes + tf.cast(offset, boxes.dtype)
    return np.asarray(boxes) + offset.astype(np.asarray(boxes).dtype)


def uncrop_points(points, crop_box):
    """Shift `(N, 2)` xy points from a crop's frame to the image's."""
    return np.asarray(points) + np.array([crop_box[0], crop_box[1]], np.asarray(points).dtype)


def uncrop_masks(masks, crop_box, orig_h, orig_w):
    """Zero-pad `(..., h, w)` crop masks to `(..., orig_h, orig_w)` at the crop's place.

    Accepts numpy or TF and returns the same kind.
    """
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    orig_h, orig_w = int(orig_h), int(orig_w)
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    rank = len(masks.shape)
    pad = [[0, 0]] * (rank - 2) + [[y0, pad_y - y0], [x0, pad_x - x0]]
    if isinstance(masks, tf.Tensor):
        return tf.pad(masks, pad)
    return np.pad(masks, pad)


# --------------------------------------------------------------------------- scoring and boxes


def calculate_stability_score(masks, mask_threshold, threshold_offset):
    """IoU between the masks thresholded at `t + offset` and at `t - offset` (Meta's score).

    The high-threshold mask is always inside the low-threshold one, so the IoU is a ratio
    of pixel counts. An empty mask scores NaN, as in PyTorch, and so fails every threshold.

    Args:
        masks: `(..., H, W)` float logits, TF tensor or numpy array.
        mask_threshold: float `t`.
        threshold_offset: float.

    Returns:
        `(...)` float32, of the input's kind (numpy in, numpy out: no full-size copy into TF).
    """
    if isinstance(masks, np.ndarray):
        inter = np.count_nonzero(masks > (mask_threshold + threshold_offset), axis=(-2, -1))
        union = np.count_nonzero(masks > (mask_threshold - threshold_offset), axis=(-2, -1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (inter / union).astype(np.float32)
    masks = tf.convert_to_tensor(masks)
    inter = tf.reduce_sum(tf.cast(masks > (mask_threshold + threshold_offset), tf.int32), axis=[-2, -1])
    union = tf.reduce_sum(tf.cast(masks > (mask_threshold - threshold_offset), tf.int32), axis=[-2, -1])
    return tf.cast(inter, tf.float32) / tf.cast(union, tf.float32)


def batched_mask_to_box(masks):
    """Tight XYXY boxes (inclusive max pixel) around boolean masks; `[0, 0, 0, 0]` when empty.

    Args:
        masks: `(..., H, W)` bool (TF or numpy).

    Returns:
        `(..., 4)` int32 tensor `[x0, y0, x1, y1]`.
    """
    masks = tf.cast(tf.convert_to_tensor(masks), tf.bool)
    shape = tf.shape(masks)
    height, width = shape[-2], shape[-1]

    def edges(present, size):
        # present: (..., size) bool; returns (first, last) index or (size, 0) when absent.
        idx = tf.range(size, dtype=tf.int32)
        last = tf.reduce_max(tf.where(present, idx, 0), axis=-1)
        first = tf.reduce_min(tf.where(present, idx, size), axis=-1)
        return first, last

    top, bottom = edges(tf.reduce_any(masks, axis=-1), height)
    left, right = edges(tf.reduce_any(masks, axis=-2), width)
    empty = (right < left) | (bottom < top)
    out = tf.stack([left, top, right, bottom], axis=-1)
    return tf.where(empty[..., None], tf.zeros_like(out), out)


def is_box_near_crop_edge(boxes, crop_box, orig_box, atol=20.0):
    """Marks boxes touching a crop's edge where that edge is not also the image's edge.

    Args:
        boxes: `(N, 4)` XYXY in the crop's frame.
        crop_box: `[x0, y0, x1, y1]` of the crop in the image.
        orig_box: `[0, 0, W, H]`, the image.
        atol: float, how close counts as touching (pixels).

    Returns:
        `(N,)` bool tensor.
    """
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    crop = tf.constant([float(v) for v in crop_box], tf.float32)
    orig = tf.constant([float(v) for v in orig_box], tf.float32)
    boxes = uncrop_boxes_xyxy(boxes, [float(v) for v in crop_box])
    near_crop = tf.abs(boxes - crop[None]) <= atol
    near_image = tf.abs(boxes - orig[None]) <= atol
    return tf.reduce_any(near_crop & ~near_image, axis=-1)


def box_xyxy_to_xywh(boxes):
    """`(..., 4)` XYXY -> XYWH (numpy)."""
    boxes = np.array(boxes, copy=True)
    boxes[..., 2] = boxes[..., 2] - boxes[..., 0]
    boxes[..., 3] = boxes[..., 3] - boxes[..., 1]
    return boxes


def box_area(boxes):
    """`(N, 4)` XYXY -> `(N,)` areas `(x1 - x0) * (y1 - y0)` (numpy)."""
    boxes = np.asarray(boxes, np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes, scores, iou_threshold):
    """Greedy box NMS with `tf.image.non_max_suppression` (like torchvision's `batched_nms` on one class).

    Boxes whose IoU with a higher-scored kept box exceeds `iou_threshold` are dropped; ties
    in score keep the lower index first, which is what a stable sort gives in PyTorch.

    Args:
        boxes: `(N, 4)` XYXY.
        scores: `(N,)`.
        iou_threshold: float.

    Returns:
        `(K,)` int32 numpy indices into the inputs, highest score first.
    """
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    scores = tf.cast(tf.reshape(tf.convert_to_tensor(scores), [-1]), tf.float32)
    n = int(boxes.shape[0])
    if n == 0:
        return np.zeros((0,), np.int32)
    # TF wants [y0, x0, y1, x1].
    yxyx = tf.gather(boxes, [1, 0, 3, 2], axis=1)
    keep = tf.image.non_max_suppression(yxyx, scores, max_output_size=n, iou_threshold=float(iou_threshold))
    return keep.numpy().astype(np.int32)


# --------------------------------------------------------------------------- RLE


def mask_to_rle(masks, as_list=True):
    """Uncompressed COCO RLE of boolean masks (column-major counts, starting with zeros).

    Args:
        masks: `(N, H, W)` bool (numpy or TF).
        as_list: counts as Python lists (HF's and JSON's format); False gives int64 numpy
            arrays, several times smaller when many masks are held at once.

    Returns:
        list of N dicts `{"size": [H, W], "counts": [int, ...]}`.
    """
    masks = np.asarray(masks.numpy() if hasattr(masks, "numpy") else masks, bool)
    n, h, w = masks.shape
    flat = np.ascontiguousarray(masks.transpose(0, 2, 1)).reshape(n, h * w)
    out = []
    for i in range(n):
        change = np.flatnonzero(flat[i, 1:] != flat[i, :-1]) + 1
        bounds = np.concatenate([[0], change, [h * w]])
        counts = np.diff(bounds)
        if flat.shape[1] and flat[i, 0]:
            counts = np.concatenate([[0], counts])
        out.append({"size": [h, w], "counts": counts.tolist() if as_list else counts})
    return out


def rle_counts_to_list(rle):
    """The same RLE with its counts as a list of Python ints (JSON-serialisable)."""
    return {"size": [int(v) for v in rle["size"]], "counts": np.asarray(rle["counts"]).astype(int).tolist()}


def rle_to_mask(rle):
    """Decode an uncompressed RLE dict to an `(H, W)` bool numpy mask."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], np.int64)
    values = (np.arange(len(counts)) % 2).astype(bool)
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h * w} for size {[h, w]}.")
    return flat.reshape(w, h).T


def area_from_rle(rle):
    """Foreground pixel count of an uncompressed RLE."""
    return int(np.sum(np.asarray(rle["counts"], np.int64)[1::2]))


def _encode_counts_string(counts):
    """pycocotools' `rleToString`: LEB128-like 5-bit groups, deltas from the count two back."""
    chars = []
    for i, value in enumerate(counts):
        x = int(value)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C on a signed long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def _decode_counts_string(text):
    """pycocotools' `rleFrString`: the inverse of `_encode_counts_string`."""
    counts, p = [], 0
    data = text.encode() if isinstance(text, str) else bytes(text)
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_encode_rle(uncompressed_rle):
    """Compressed COCO RLE (`counts` as a string), the format `pycocotools.mask.decode` reads.

    Args:
        uncompressed_rle: `{"size": [H, W], "counts": [int, ...]}`.

    Returns:
        `{"size": [H, W], "counts": str}`.
    """
    h, w = (int(v) for v in uncompressed_rle["size"])
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        mask_utils = None
    if mask_utils is not None:
        rle = mask_utils.frPyObjects(rle_counts_to_list(uncompressed_rle), h, w)
        counts = rle["counts"]
    else:
        counts = _encode_counts_string(uncompressed_rle["counts"])
    return {"size": [h, w], "counts": counts.decode("utf-8") if isinstance(counts, bytes) else counts}


def coco_decode_rle(rle):
    """Decode a compressed (string counts) or uncompressed COCO RLE to an `(H, W)` bool mask."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        rle = {"size": rle["size"], "counts": _decode_counts_string(counts)}
    return rle_to_mask(rle)


# --------------------------------------------------------------------------- small regions


def _label_runs(mask):
    """8-connected components of a 2-D bool mask, computed on horizontal runs.

    Returns:
        `(rows, starts, ends, labels)`: one entry per run of True pixels (`ends` exclusive),
        with `labels` in `[0, n_components)`.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # (h, w + 1): +1 at a run start, -1 one past its end
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    n = len(rows)
    if n == 0:
        return rows, starts, ends, np.zeros((0,), np.int64)
    # Runs are sorted by (row, start), so a key row * stride + column sorts them too; a run b
    # touches (8-connectivity) every run a of the row above with a.start <= b.end and
    # a.end >= b.start (ends exclusive), which is a contiguous range of runs.
    stride = w + 2
    key_start = rows * stride + starts
    key_end = rows * stride + ends
    above = (rows - 1) * stride
    lo = np.searchsorted(key_end, above + starts, side="left")
    hi = np.searchsorted(key_start, above + ends, side="right")
    hi = np.maximum(hi, lo)
    counts = hi - lo
    b = np.repeat(np.arange(n), counts)
    a = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    valid = rows[a] == rows[b] - 1
    a, b = a[valid], b[valid]
    labels = np.arange(n)
    while True:
        # Hook both ends of every edge to the smaller label, then jump pointers.
        low = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, labels[a], low)
        np.minimum.at(new, labels[b], low)
        new = new[new]
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            break
        labels = new
    _, labels = np.unique(labels, return_inverse=True)
    return rows, starts, ends, labels.reshape(-1)


def _paint_runs(shape, rows, starts, ends):
    """A bool mask of `shape` with the given runs set."""
    h, w = shape
    delta = np.zeros((h, w + 1), np.int32)
    np.add.at(delta, (rows, starts), 1)
    np.add.at(delta, (rows, ends), -1)
    return np.cumsum(delta, axis=1)[:, :w] > 0


def label_components(mask):
    """8-connected component labels of a 2-D bool mask (background 0, components 1..n).

    Args:
        mask: `(H, W)` bool.

    Returns:
        `(labels (H, W) int32, n_components)`.
    """
    mask = np.asarray(mask, bool)
    rows, starts, ends, labels = _label_runs(mask)
    out = np.zeros(mask.shape, np.int32)
    for r, s, e, lab in zip(rows, starts, ends, labels):
        out[r, s:e] = lab + 1
    return out, int(labels.max() + 1) if len(labels) else 0


def remove_small_regions(mask, area_thresh, mode):
    """Fills small holes or removes small islands, like Meta's (OpenCV-based) helper.

    Args:
        mask: `(H, W)` bool numpy.
        area_thresh: int; regions with fewer pixels are changed.
        mode: "holes" (fill background regions below the threshold, 8-connected) or
            "islands" (drop foreground regions below it, keeping the largest if all are).

    Returns:
        `(mask (H, W) bool, changed bool)`.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    mask = np.asarray(mask, bool)
    correct_holes = mode == "holes"
    working = mask ^ correct_holes
    rows, starts, ends, labels = _label_runs(working)
    if len(labels) == 0:
        return mask, False
    sizes = np.bincount(labels, weights=ends - starts).astype(np.int64)
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if correct_holes:
        fill = small[labels]
        return mask | _paint_runs(mask.shape, rows[fill], starts[fill], ends[fill]), True
    keep = ~small
    if not keep.any():
        keep = np.zeros_like(small)
        keep[int(np.argmax(sizes))] = True
    sel = keep[labels]
    return _paint_runs(mask.shape, rows[sel], starts[sel], ends[sel]), True


# --------------------------------------------------------------------------- HF-compatible steps


def filter_masks(masks, iou_scores, original_size, cropped_box_image, pred_iou_thresh=0.88,
                 stability_score_thresh=0.95, mask_threshold=0, stability_score_offset=1):
    """HF's `SamImageProcessor.filter_masks` in TF: score filters, boxes, crop-edge filter, RLE.

    Args:
        masks: `(P, 3, h, w)` float logits of one crop, already at the crop's size.
        iou_scores: `(P, 3)` predicted IoUs.
        original_size: `(H, W)` of the full image.
        cropped_box_image: `[x0, y0, x1, y1]` of the crop.
        pred_iou_thresh, stability_score_thresh: filters, applied with `>` when above 0.
        mask_threshold: float, logit threshold.
        stability_score_offset: float.

    Returns:
        `(rle_masks, scores, boxes)`: a list of K uncompressed RLE dicts of masks padded to
        `(H, W)`, `(K,)` float32 scores, `(K, 4)` int32 XYXY boxes in image pixels.
    """
    original_height, original_width = (int(v) for v in original_size)
    masks = tf.convert_to_tensor(masks)
    iou_scores = tf.convert_to_tensor(iou_scores)
    masks = tf.reshape(masks, tf.concat([[-1], tf.shape(masks)[2:]], axis=0))
    iou_scores = tf.reshape(iou_scores, [-1])
    if masks.shape[0] != iou_scores.shape[0]:
        raise ValueError("masks and iou_scores must have the same batch size.")
    keep = tf.ones_like(iou_scores, tf.bool)
    if pred_iou_thresh > 0.0:
        keep &= iou_scores > pred_iou_thresh
    if stability_score_thresh > 0.0:
        keep &= calculate_stability_score(masks, mask_threshold, stability_score_offset) > stability_score_thresh
    scores = tf.boolean_mask(iou_scores, keep)
    masks = tf.boolean_mask(masks, keep) > mask_threshold
    boxes = batched_mask_to_box(masks)
    keep = ~is_box_near_crop_edge(boxes, cropped_box_image, [0, 0, original_width, original_height])
    scores = tf.boolean_mask(scores, keep)
    masks = tf.boolean_mask(masks, keep)
    boxes = uncrop_boxes_xyxy(tf.boolean_mask(boxes, keep), [int(v) for v in cropped_box_image])
    masks = uncrop_masks(masks, [int(v) for v in cropped_box_image], original_height, original_width)
    return mask_to_rle(masks), scores, boxes


def post_process_for_mask_generation(all_masks, all_scores, all_boxes, crops_nms_thresh):
    """HF's final step: NMS over every crop's masks (TF NMS instead of torchvision's).

    Args:
        all_masks: list of N uncompressed RLE dicts.
        all_scores: `(N,)` scores.
        all_boxes: `(N, 4)` XYXY boxes.
        crops_nms_thresh: float, box-IoU threshold.

    Returns:
        `(masks, iou_scores, rle_masks, mask_boxes)`: a list of K `(H, W)` bool numpy masks,
        `(K,)` scores tensor, the K kept RLE dicts and `(K, 4)` boxes tensor, best first.
    """
    keep = nms(all_boxes, all_scores, crops_nms_thresh)
    iou_scores = tf.gather(tf.reshape(tf.convert_to_tensor(all_scores), [-1]), keep)
    rle_masks = [all_masks[i] for i in keep]
    mask_boxes = tf.gather(tf.convert_to_tensor(all_boxes), keep)
    return [rle_to_mask(rle) for rle in rle_masks], iou_scores, rle_masks, mask_boxes
