"""tf_sam.amg helpers against HF's torch implementations, pycocotools and scikit-image."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import require_shared_image
from tf_sam import amg

torch = pytest.importorskip("torch")
hf_sam = pytest.importorskip("transformers.models.sam.image_processing_pil_sam")


def _random_masks(rng, n, h, w, density=0.5):
    """Blobby random masks (upsampled noise) plus an empty and a full one."""
    low = rng.random((n, -(-h // 8), -(-w // 8))) < density
    masks = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)[:, :h, :w]
    masks[0] = False
    masks[1] = True
    return masks


def _hf_processor(side=64):
    import transformers

    return transformers.SamImageProcessor(
        size={"longest_edge": side}, pad_size={"height": side, "width": side},
        mask_size={"longest_edge": side // 2}, mask_pad_size={"height": side // 2, "width": side // 2},
    )


def test_point_grid_matches_hf():
    for n in (1, 4, 32):
        np.testing.assert_array_equal(amg.build_point_grid(n), hf_sam._build_point_grid(n))
    grids = amg.build_all_layer_point_grids(16, 2, 2)
    assert [len(g) for g in grids] == [256, 64, 16]


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_generate_crop_boxes_matches_hf_on_a_non_square_photo(layers):
    with Image.open(require_shared_image("sam_truck.jpg")) as image:
        photo = image.convert("RGB")
    hf_boxes, hf_points, hf_crops, hf_labels = _hf_processor(1024).generate_crop_boxes(photo, 1024, layers, 512 / 1500,
                                                                                       8, 1)
    boxes, points, crops, labels = amg.generate_crop_boxes(photo, 1024, layers, 512 / 1500, 8, 1)
    assert len(boxes) == 1 + sum(4**i for i in range(1, layers + 1))
    np.testing.assert_array_equal(boxes.numpy(), hf_boxes.numpy())
    assert boxes.dtype == tf.float32 and points.dtype == tf.float64 and labels.dtype == tf.int64
    np.testing.assert_array_equal(points.numpy(), hf_points.numpy())
    np.testing.assert_array_equal(labels.numpy(), hf_labels.numpy())
    assert len(crops) == len(hf_crops)
    for ours, theirs in zip(crops, hf_crops):
        np.testing.assert_array_equal(ours, np.moveaxis(theirs, 0, -1))  # ours are channels-last


def test_stability_score_and_boxes_match_hf():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3, 37, 53)).astype(np.float32) * 3
    logits[0, 0] = -10.0  # empty at every threshold: NaN in both
    ours = amg.calculate_stability_score(tf.constant(logits), 0.0, 1.0).numpy()
    theirs = hf_sam._compute_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, equal_nan=True)
    assert np.isnan(ours[0, 0])
    in_numpy = amg.calculate_stability_score(logits, 0.0, 1.0)
    assert isinstance(in_numpy, np.ndarray) and in_numpy.dtype == np.float32
    np.testing.assert_allclose(in_numpy, theirs, rtol=1e-6, equal_nan=True)

    masks = _random_masks(rng, 10, 45, 70, density=0.1)
    ours = amg.batched_mask_to_box(masks).numpy()
    theirs = hf_sam._batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(ours[1], [0, 0, 69, 44])
    assert amg.batched_mask_to_box(masks.reshape(2, 5, 45, 70)).shape == (2, 5, 4)


def test_is_box_near_crop_edge_matches_hf():
    rng = np.random.default_rng(1)
    boxes = rng.integers(0, 300, (200, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    for crop in ([0, 0, 400, 300], [100, 50, 400, 250], [0, 120, 260, 300]):
        ours = amg.is_box_near_crop_edge(boxes, crop, [0, 0, 400, 300]).numpy()
        theirs = hf_sam._is_box_near_crop_edge(torch.from_numpy(boxes), crop, [0, 0, 400, 300]).numpy()
        np.testing.assert_array_equal(ours, theirs)


def test_rle_matches_hf_and_round_trips():
    rng = np.random.default_rng(2)
    masks = _random_masks(rng, 8, 33, 47)
    masks[2] = rng.random((33, 47)) < 0.5  # pixel noise: many short runs
    masks[3, 0, 0] = True  # starts with a foreground pixel
    ours = amg.mask_to_rle(masks)
    theirs = hf_sam._mask_to_rle(torch.from_numpy(masks))
    assert ours == theirs
    assert ours[0]["counts"] == [33 * 47] and ours[1]["counts"] == [0, 33 * 47]
    for mask, rle in zip(masks, ours):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
        np.testing.assert_array_equal(hf_sam._rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == mask.sum()
    assert amg.mask_to_rle(np.zeros((0, 5, 6), bool)) == []
    with pytest.raises(ValueError, match="expected 30"):
        amg.rle_to_mask({"size": [5, 6], "counts": [3, 4]})


def test_coco_rle_matches_pycocotools():
    rng = np.random.default_rng(3)
    masks = _random_masks(rng, 6, 61, 40)
    masks[2] = rng.random((61, 40)) < 0.5
    big = np.zeros((1, 700, 900), bool)
    big[0, 100:600, 50:850] = True  # counts far above 2**5 and negative deltas
    rles = amg.mask_to_rle(masks) + amg.mask_to_rle(big)
    for rle, mask in zip(rles, list(masks) + [big[0]]):
        coco = amg.coco_encode_rle(rle)
        own = amg._encode_counts_string(rle["counts"])
        assert isinstance(coco["counts"], str) and coco["size"] == list(mask.shape)
        assert amg._decode_counts_string(own) == [int(c) for c in rle["counts"]]
        np.testing.assert_array_equal(amg.coco_decode_rle(coco), mask)
        mask_utils = pytest.importorskip("pycocotools.mask")
        assert own == coco["counts"]  # the fallback encoder writes pycocotools' exact string
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert reference["counts"].decode() == own
        np.testing.assert_array_equal(mask_utils.decode(dict(coco, counts=coco["counts"].encode())), mask)
        assert mask_utils.area(reference) == mask.sum()


def _reference_nms(boxes, scores, threshold):
    """torchvision.ops.nms semantics in numpy: stable score order, drop IoU > threshold."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep, removed = [], np.zeros(len(boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        if removed[i]:
            continue
        keep.append(i)
        iw = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            removed |= iw * ih / (area[i] + area - iw * ih) > threshold
    return np.array(keep)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_torchvision_semantics(threshold):
    rng = np.random.default_rng(4)
    xy = rng.integers(0, 200, (300, 2))
    wh = rng.integers(0, 80, (300, 2))  # some zero-area boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.random(300).astype(np.float32)
    scores[::7] = scores[0]  # ties, as the cross-crop NMS has (one score per crop)
    np.testing.assert_array_equal(amg.nms(boxes, scores, threshold), _reference_nms(boxes, scores, threshold))
    assert amg.nms(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)


def test_filter_masks_and_post_processing_match_hf():
    rng = np.random.default_rng(5)
    hf = _hf_processor()
    height, width = 90, 130
    crop = [40, 20, 130, 90]  # touches the image's right and bottom edges only
    ch, cw = crop[3] - crop[1], crop[2] - crop[0]
    ys, xs = np.mgrid[0:ch, 0:cw]
    centres = rng.uniform([0, 0], [cw, ch], (8, 3, 2))
    radii = rng.uniform(5, 40, (8, 3))
    logits = (radii[..., None, None] - np.hypot(xs - centres[..., 0, None, None], ys - centres[..., 1, None, None]))
    logits = (logits / 3).astype(np.float32)
    scores = rng.uniform(0.5, 1.0, (8, 3)).astype(np.float32)
    args = ((height, width), crop, 0.6, 0.7, 0.0, 1.0)
    rles, kept_scores, boxes = amg.filter_masks(logits, scores, *args)
    hf_rles, hf_scores, hf_boxes = hf.filter_masks(torch.from_numpy(logits), torch.from_numpy(scores), *args)
    assert 0 < len(rles) < 24
    assert rles == hf_rles
    np.testing.assert_array_equal(kept_scores.numpy(), hf_scores.numpy())
    np.testing.assert_array_equal(boxes.numpy(), hf_boxes.numpy())

    masks, out_scores, out_rles, out_boxes = amg.post_process_for_mask_generation(rles, kept_scores, boxes, 0.5)
    keep = _reference_nms(hf_boxes.numpy(), hf_scores.numpy(), 0.5)
    assert out_rles == [hf_rles[i] for i in keep]
    np.testing.assert_array_equal(out_scores.numpy(), hf_scores.numpy()[keep])
    np.testing.assert_array_equal(out_boxes.numpy(), hf_boxes.numpy()[keep])
    for mask, i in zip(masks, keep):
        assert mask.shape == (height, width)
        np.testing.assert_array_equal(mask, hf_sam._rle_to_mask(hf_rles[i]))


def _skimage_remove_small_regions(mask, area_thresh, mode):
    """Meta's OpenCV helper rewritten on scikit-image (8-connectivity), as the reference."""
    measure = pytest.importorskip("skimage.measure")
    correct_holes = mode == "holes"
    working = correct_holes ^ mask
    regions = measure.label(working, connectivity=2)
    sizes = np.bincount(regions.ravel())[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(len(sizes) + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_regions_matches_reference(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((60, 80)) < 0.45 + 0.05 * seed  # percolating noise: many odd shapes
    mask[20:45, 10:70] |= rng.random((25, 60)) < 0.9
    for mode in ("holes", "islands"):
        for area in (1, 3, 10, 200, 10_000):
            ours, changed = amg.remove_small_regions(mask, area, mode)
            theirs, ref_changed = _skimage_remove_small_regions(mask, area, mode)
            assert changed == ref_changed
            np.testing.assert_array_equal(ours, theirs)
    measure = pytest.importorskip("skimage.measure")
    labels, n = amg.label_components(mask)
    reference = measure.label(mask, connectivity=2)
    assert n == reference.max()
    # Same partition: a one-to-one map between label sets.
    pairs = np.unique(np.stack([labels.ravel(), reference.ravel()]), axis=1)
    assert pairs.shape[1] == n + 1


def test_remove_small_regions_edge_cases():
    empty = np.zeros((5, 7), bool)
    out, changed = amg.remove_small_regions(empty, 10, "islands")
    assert not changed and not out.any()
    full = np.ones((5, 7), bool)
    out, changed = amg.remove_small_regions(full, 10, "holes")
    assert not changed and out.all()
    # Diagonal neighbours are connected (8-connectivity), so this is one 3-pixel island.
    diagonal = np.eye(3, dtype=bool)
    assert not amg.remove_small_regions(diagonal, 3, "islands")[1]
    out, changed = amg.remove_small_regions(diagonal, 4, "islands")
    assert changed and out.sum() == 3  # every island is small: the largest is kept
    with pytest.raises(ValueError, match="holes"):
        amg.remove_small_regions(full, 1, "specks")


def test_uncrop_helpers():
    masks = np.ones((2, 3, 4), bool)
    out = amg.uncrop_masks(masks, [5, 6, 9, 9], 10, 12)
    assert out.shape == (2, 10, 12) and out.sum() == 24 and out[:, 6:9, 5:9].all()
    assert amg.uncrop_masks(tf.constant(masks), [5, 6, 9, 9], 10, 12).shape == (2, 10, 12)
    assert amg.uncrop_masks(masks, [0, 0, 4, 3], 3, 4) is masks
    np.testing.assert_array_equal(amg.uncrop_boxes_xyxy(np.array([[1, 2, 3, 4]]), [10, 20, 50, 60]),
                                  [[11, 22, 13, 24]])
    np.testing.assert_array_equal(amg.uncrop_points(np.array([[1.5, 2.0]]), [10, 20, 50, 60]), [[11.5, 22.0]])
    np.testing.assert_array_equal(amg.box_xyxy_to_xywh(np.array([[1, 2, 5, 9]])), [[1, 2, 4, 7]])


def test_sam_image_processor_mask_generation_helpers_are_the_amg_functions():
    """HF's mask-generation helpers on SamImageProcessor give what tf_sam.amg gives."""
    from tf_sam.processing import SamImageProcessor

    processor = SamImageProcessor.for_image_size(64, 8)
    image = (np.random.default_rng(6).random((40, 70, 3)) * 255).astype(np.uint8)
    ours = processor.generate_crop_boxes(image, 64, 1, 512 / 1500, 4, 1)
    ref = amg.generate_crop_boxes(image, 64, 1, 512 / 1500, 4, 1)
    for a, b in zip(ours[:2] + ours[3:], ref[:2] + ref[3:]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    logits = np.random.default_rng(7).normal(size=(2, 3, 40, 70)).astype(np.float32) * 3
    scores = np.full((2, 3), 0.9, np.float32)
    args = (logits, scores, (40, 70), [0, 0, 70, 40], 0.5, 0.1)
    rles, kept, boxes = processor.filter_masks(*args)
    assert rles == amg.filter_masks(*args)[0]
    out = processor.post_process_for_mask_generation(rles, kept, boxes, 0.7)
    assert out[2] == amg.post_process_for_mask_generation(rles, kept, boxes, 0.7)[2]
    masks = np.random.default_rng(8).random((3, 9, 7)) > 0.5
    decoded = [processor.rle_to_mask(r) for r in processor.mask_to_rle(masks)]
    np.testing.assert_array_equal(np.stack(decoded), masks)
