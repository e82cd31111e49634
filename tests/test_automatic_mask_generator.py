"""SamAutomaticMaskGenerator: parity with HF's mask-generation pipeline, schema, crops, batching."""

import numpy as np
import pytest
from PIL import Image

import tf_sam
from tests.conftest import mask_iou, perturbed_hf_model, require_shared_image, tiny_config_dict
from tf_sam import amg
from tf_sam.automatic_mask_generator import SamAutomaticMaskGenerator

RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """`(hf_model, tf_model)` with the same random weights and O(1) mask logits.

    The perturbed tiny model's mask logits are ~0.05, so every stability score would be 0
    at SAM's offset of 1; scaling the hypernetwork outputs makes the logits O(1) without
    changing anything else.
    """
    torch = pytest.importorskip("torch")
    hf = perturbed_hf_model(tiny_config_dict(), seed=7)
    with torch.no_grad():
        for mlp in hf.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(30.0)
            mlp.proj_out.bias.mul_(30.0)
    directory = tmp_path_factory.mktemp("amg-model")
    hf.save_pretrained(directory)
    return hf, tf_sam.checkpoint.load_pretrained(str(directory))


@pytest.fixture(scope="module")
def photo():
    """A real photo at 400x267, small enough for full-resolution masks to be quick."""
    with Image.open(require_shared_image("sam_dog.jpg")) as image:
        return np.asarray(image.convert("RGB").resize((400, 267), Image.BILINEAR))


def _reference_nms(boxes, scores, threshold):
    """torchvision.ops.nms semantics in numpy (torchvision is not a test dependency)."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep, removed = [], np.zeros(len(boxes), bool)
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        xx0 = np.maximum(boxes[i, 0], boxes[:, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[:, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[:, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            removed |= inter / (area[i] + area - inter) > threshold
    return np.array(keep, np.int64)


def _hf_processor(side=64):
    """HF's image processor for a `side`-pixel model (PIL backend without torchvision)."""
    transformers = pytest.importorskip("transformers")
    mask_side = side // 2 if side == 64 else side // 4  # tiny_config_dict's patch is 8, SAM's 16
    return transformers.SamImageProcessor(
        size={"longest_edge": side}, pad_size={"height": side, "width": side},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    )


def _hf_pipeline_outputs(hf_model, image, side=64, **kwargs):
    """HF's pipeline (preprocess + forward) with the final torchvision NMS done in numpy."""
    transformers = pytest.importorskip("transformers")
    processor = _hf_processor(side)
    pipe = transformers.pipeline("mask-generation", model=hf_model, image_processor=processor, device="cpu")
    nms_thresh = kwargs.pop("crops_nms_thresh")
    pre, forward, _ = pipe._sanitize_parameters(**kwargs)
    outputs = [pipe.forward(inputs, **forward) for inputs in pipe.preprocess(Image.fromarray(image), **pre)]
    rles = [rle for out in outputs for rle in out["masks"]]
    scores = np.concatenate([out["iou_scores"].numpy() for out in outputs])
    boxes = np.concatenate([out["boxes"].numpy() for out in outputs])
    return rles, scores, boxes, nms_thresh


def _stability_gap_threshold(hf_model, image, points_per_side, side=64):
    """A stability threshold in the middle of a wide gap of the reference scores.

    A score within float error of the threshold could flip either way; a gap makes the
    count comparison exact. Also keeps roughly the upper half of the masks.
    """
    torch = pytest.importorskip("torch")
    from transformers.models.sam.image_processing_pil_sam import _compute_stability_score

    processor = _hf_processor(side)
    _, points, crops, labels = processor.generate_crop_boxes(Image.fromarray(image), side, 0, 512 / 1500,
                                                             points_per_side, 1)
    inputs = processor(images=crops, return_tensors="pt")
    with torch.no_grad():
        out = hf_model(pixel_values=inputs["pixel_values"], input_points=points, input_labels=labels)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"].tolist(),
                                         inputs["reshaped_input_sizes"].tolist(), binarize=False)[0]
    scores = np.sort(_compute_stability_score(masks.flatten(0, 1), 0.0, 1.0).numpy())
    scores = scores[np.isfinite(scores)]
    middle = scores[len(scores) // 4: 3 * len(scores) // 4]
    gaps = np.diff(middle)
    i = int(np.argmax(gaps))
    assert gaps[i] > 1e-4, "no usable gap in the stability scores"
    return float((middle[i] + middle[i + 1]) / 2)


@pytest.fixture(scope="module")
def threshold(models, photo):
    return _stability_gap_threshold(models[0], photo, 8)


def test_matches_hf_mask_generation_pipeline(models, photo, threshold):
    hf_model, model = models
    rles, scores, boxes, nms_thresh = _hf_pipeline_outputs(
        hf_model, photo, points_per_batch=16, points_per_crop=8, crops_n_layers=0, pred_iou_thresh=0.0,
        stability_score_thresh=threshold, crops_nms_thresh=0.7,
    )
    keep = _reference_nms(boxes, scores, nms_thresh)
    # A random model's masks all span the photo, so NMS keeps one; the test below compares
    # every mask with NMS off, and test_amg checks NMS itself on varied boxes.
    assert len(keep) >= 1 and len(scores) > 10
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=threshold,
        box_nms_thresh=0.7,
    )
    records = generator.generate(photo)
    assert len(records) == len(keep)
    for record, i in zip(records, keep):
        assert record["predicted_iou"] == pytest.approx(float(scores[i]), abs=1e-4)
        iou = mask_iou(record["segmentation"], amg.rle_to_mask(rles[i]))
        assert iou >= 0.98, (i, iou)
        x, y, w, h = record["bbox"]
        assert np.abs(np.array([x, y, x + w, y + h]) - boxes[i]).max() <= 2
        assert record["stability_score"] >= threshold


def test_without_nms_every_surviving_mask_matches(models, photo, threshold):
    """With NMS off the comparison covers every mask that passes the filters, not just the kept few."""
    hf_model, model = models
    rles, scores, _, _ = _hf_pipeline_outputs(
        hf_model, photo, points_per_batch=64, points_per_crop=8, crops_n_layers=0, pred_iou_thresh=0.0,
        stability_score_thresh=threshold, crops_nms_thresh=1.0,
    )
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=threshold, box_nms_thresh=1.0,
        output_mode="uncompressed_rle",
    )
    records = generator.generate(photo)
    assert len(records) == len(rles) > 10
    ours = sorted(records, key=lambda r: -r["predicted_iou"])
    order = np.argsort(-scores, kind="stable")
    ious = [mask_iou(amg.rle_to_mask(r["segmentation"]), amg.rle_to_mask(rles[i])) for r, i in zip(ours, order)]
    assert min(ious) >= 0.98, min(ious)


def test_record_schema_and_output_modes(models, photo):
    _, model = models
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    binary = SamAutomaticMaskGenerator(model, **kwargs).generate(photo)
    rle = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **kwargs).generate(photo)
    coco = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs).generate(photo)
    assert len(binary) == len(rle) == len(coco) > 0
    height, width = photo.shape[:2]
    for b, r, c in zip(binary, rle, coco):
        assert set(b) == RECORD_KEYS
        mask = b["segmentation"]
        assert mask.shape == (height, width) and mask.dtype == bool
        assert b["area"] == int(mask.sum()) == r["area"] == c["area"]
        ys, xs = np.nonzero(mask)
        assert b["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert b["crop_box"] == [0, 0, width, height]
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2
        assert isinstance(b["predicted_iou"], float) and isinstance(b["stability_score"], float)
        assert r["segmentation"]["size"] == [height, width]
        np.testing.assert_array_equal(amg.rle_to_mask(r["segmentation"]), mask)
        assert isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(amg.coco_decode_rle(c["segmentation"]), mask)


def test_crops_on_a_non_square_image(models, photo):
    hf_model, model = models
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=4, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0, crop_nms_thresh=1.0,
    )
    height, width = photo.shape[:2]
    calls = []
    records = generator.generate(photo, progress=lambda: calls.append(1))
    assert len(calls) == generator.num_batches((height, width)) == 5
    expected, _ = amg.generate_crop_boxes_xyxy((height, width), 1, 512 / 1500)
    crops = {tuple(r["crop_box"]) for r in records}
    assert crops <= {tuple(amg.box_xyxy_to_xywh(b)) for b in expected}
    for record in records:
        x, y, w, h = record["crop_box"]
        px, py = record["point_coords"][0]
        assert x <= px <= x + w and y <= py <= y + h
        mask = record["segmentation"]
        assert mask.shape == (height, width)
        outside = mask.copy()
        outside[y:y + h, x:x + w] = False
        assert not outside.any()  # a crop's mask never leaks outside its crop


class _DiskPredictor:
    """Stands in for SamPredictor: three disks (radii 10, 20, 30 px) around each point.

    A random model's masks all span the image, so crop-edge filtering and cross-crop NMS
    need masks with known, local geometry to be tested.
    """

    radii = (10.0, 20.0, 30.0)

    def __init__(self):
        self.crops, self.batches, self.upscaled = [], [], []

    def set_image(self, image):
        self.original_size = image.shape[:2]
        self.crops.append(self.original_size)

    def reset_image(self):
        self.original_size = None

    def predict_batch_low_res(self, point_coords, point_labels, multimask_output=True):
        # "Low-res" logits are (x, y, radius) per mask; upscale_masks draws the disks.
        self.batches.append(len(point_coords))
        xy = np.repeat(point_coords[:, None], len(self.radii), axis=1)  # (B, 3, 1, 2)
        radii = np.broadcast_to(np.array(self.radii, np.float32)[None, :, None, None], xy.shape[:3] + (1,))
        scores = np.tile(np.array([[0.9, 0.95, 0.99]], np.float32), (len(point_coords), 1))
        return np.concatenate([xy, radii], axis=-1).astype(np.float32), scores

    def upscale_masks(self, low_res, binarize=True):
        self.upscaled.append(len(low_res))
        h, w = self.original_size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        x, y, r = (low_res[:, 0, i, None, None] for i in range(3))
        logits = r - np.hypot(xs[None] - x, ys[None] - y)
        return logits > 0 if binarize else logits


def _disk_generator(**kwargs):
    generator = SamAutomaticMaskGenerator(tf_sam.SamModel(tiny_config_dict()), **kwargs)
    generator.predictor = _DiskPredictor()
    return generator


def test_crop_layers_with_local_masks():
    image = np.zeros((200, 300, 3), np.uint8)  # non-square
    kwargs = dict(points_per_side=4, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.8,
                  box_nms_thresh=1.0, crop_overlap_ratio=0.3)
    generator = _disk_generator(crop_nms_thresh=1.0, **kwargs)
    records = generator.generate(image)
    boxes, _ = amg.generate_crop_boxes_xyxy((200, 300), 1, 0.3)
    assert generator.predictor.crops == [(b[3] - b[1], b[2] - b[0]) for b in boxes]
    xywh = {tuple(amg.box_xyxy_to_xywh(b)) for b in boxes}
    by_crop = {}
    for record in records:
        by_crop.setdefault(tuple(record["crop_box"]), []).append(record)
    assert set(by_crop) == xywh  # every crop contributes
    for (x, y, w, h), group in by_crop.items():
        for record in group:
            px, py = record["point_coords"][0]
            assert x <= px <= x + w and y <= py <= y + h
            mask = record["segmentation"]
            inside = np.zeros_like(mask)
            inside[y:y + h, x:x + w] = True
            assert not (mask & ~inside).any()
            # The disk sits at its prompt in image coordinates, so uncropping is right.
            ys, xs = np.nonzero(mask)
            bx, by, bw, bh = record["bbox"]
            assert (bx, by, bw, bh) == (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())
            if bx > x and by > y and bx + bw < x + w - 1 and by + bh < y + h - 1:
                assert abs(xs.mean() - px) < 1 and abs(ys.mean() - py) < 1
            # Masks touching a crop edge inside the image were dropped (20 px tolerance).
            edges_inside = [(x, x > 0), (y, y > 0), (x + w, x + w < 300), (y + h, y + h < 200)]
            for (edge, interior), value in zip(edges_inside, (bx, by, bx + bw, by + bh)):
                assert not (interior and abs(value - edge) <= 20)
    # Cross-crop NMS: identical disks found in several crops collapse, the smallest crop's kept.
    deduplicated = _disk_generator(crop_nms_thresh=0.7, **kwargs).generate(image)
    assert 0 < len(deduplicated) < len(records)
    full = (0, 0, 300, 200)
    for record in deduplicated:
        if tuple(record["crop_box"]) == full:
            mask = record["segmentation"]
            twins = [r for r in records if tuple(r["crop_box"]) != full and mask_iou(r["segmentation"], mask) > 0.99]
            assert not twins  # a crop's copy would have won


def test_decoder_never_sees_more_than_points_per_batch(models, photo, monkeypatch):
    _, model = models
    generator = SamAutomaticMaskGenerator(model, points_per_side=6, points_per_batch=10, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0)
    seen = []
    decode = generator.predictor._decode_cached  # point prompts use the per-image decoder cache

    def spy(cache, points, *args):
        seen.append(int(points.shape[0]) * int(points.shape[1]))
        return decode(cache, points, *args)

    monkeypatch.setattr(generator.predictor, "_decode_cached", spy)
    encodes = []
    encoder = generator.model.get_image_embeddings
    monkeypatch.setattr(generator.model, "get_image_embeddings", lambda *a, **k: encodes.append(1) or encoder(*a, **k))
    records = generator.generate(photo)
    # Pass one scores all 36 points; pass two decodes again only the NMS survivors' points.
    assert seen[:4] == [10, 10, 10, 6] and len(encodes) == 1
    assert max(seen) <= 10 and sum(seen[4:]) == len(records) > 0


def test_min_mask_region_area_cleans_masks(models, photo):
    _, model = models
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    plain = SamAutomaticMaskGenerator(model, **kwargs).generate(photo)
    cleaned = SamAutomaticMaskGenerator(model, min_mask_region_area=200, **kwargs).generate(photo)
    assert 0 < len(cleaned) <= len(plain)
    for record in cleaned:
        mask = record["segmentation"]
        assert not amg.remove_small_regions(mask, 200, "holes")[1]
        labels, n = amg.label_components(mask)
        sizes = np.bincount(labels.ravel())[1:]
        assert n == 1 or sizes.min() >= 200  # a mask of only small islands keeps its largest
        ys, xs = np.nonzero(mask)
        assert record["area"] == mask.sum()
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


class _SpeckledDiskPredictor(_DiskPredictor):
    """Disks with a 3x3 hole at the centre and a 3x3 island in the image's corner."""

    def upscale_masks(self, low_res, binarize=True):
        logits = super().upscale_masks(low_res, binarize=False)
        for i, (x, y) in enumerate(low_res[:, 0, :2].round().astype(int)):
            logits[i, y - 1:y + 2, x - 1:x + 2] = -5.0
        logits[:, 2:5, 2:5] = 5.0
        return logits > 0 if binarize else logits


def test_small_holes_and_islands_are_removed_without_opencv():
    image = np.zeros((120, 160, 3), np.uint8)
    kwargs = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    raw = _disk_generator(**kwargs)
    raw.predictor = _SpeckledDiskPredictor()
    before = raw.generate(image)
    clean = _disk_generator(min_mask_region_area=20, **kwargs)
    clean.predictor = _SpeckledDiskPredictor()
    after = clean.generate(image)
    assert len(before) == len(after) == 12
    for b, a in zip(sorted(before, key=lambda r: r["area"]), sorted(after, key=lambda r: r["area"])):
        assert b["segmentation"][3, 3] and not a["segmentation"][3, 3]  # island gone
        px, py = (round(v) for v in a["point_coords"][0])
        assert not b["segmentation"][py, px] and a["segmentation"][py, px]  # hole filled
        assert a["area"] == b["area"]  # 9 hole pixels filled, 9 island pixels removed
        assert a["bbox"][0] > 5  # the box no longer reaches the island


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(points_per_side=None), "Exactly one of points_per_side or point_grids"),
        (dict(point_grids=[np.zeros((1, 2))]), "Exactly one of points_per_side or point_grids"),
        (dict(output_mode="png"), "output_mode must be one of"),
        (dict(points_per_batch=0), "points_per_batch must be at least 1"),
        (dict(points_per_side=None, point_grids=[np.zeros((1, 2))], crop_n_layers=1), "one grid per layer"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    model = tf_sam.SamModel(tiny_config_dict())
    with pytest.raises(ValueError, match=pattern):
        SamAutomaticMaskGenerator(model, **kwargs)


def test_custom_point_grids_and_pil_input(models, photo):
    _, model = models
    grid = np.array([[0.25, 0.5], [0.75, 0.5]])
    generator = SamAutomaticMaskGenerator(model, points_per_side=None, point_grids=[grid], pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = generator.generate(Image.fromarray(photo))
    height, width = photo.shape[:2]
    points = {tuple(r["point_coords"][0]) for r in records}
    assert points <= {(0.25 * width, 0.5 * height), (0.75 * width, 0.5 * height)}


def test_only_masks_passing_the_score_filter_are_upscaled_a_few_at_a_time(monkeypatch):
    # Full-size maps of a whole point batch are the generator's memory peak; it must upscale
    # the survivors of the score filter in bounded chunks, with unchanged results.
    import tf_sam.automatic_mask_generator as module

    image = np.zeros((200, 300, 3), np.uint8)
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.92, stability_score_thresh=0.8, box_nms_thresh=1.0)
    whole = _disk_generator(**kwargs)
    expected = whole.generate(image)
    assert whole.predictor.upscaled[0] == 32  # 16 points x the 2 masks scoring above 0.92

    monkeypatch.setattr(module, "_UPSCALE_PIXELS", 200 * 300 * 5)
    chunked = _disk_generator(**kwargs)
    records = chunked.generate(image)
    # Pass one: the 32 survivors of the score filter; pass two: the NMS survivors' masks.
    assert chunked.predictor.upscaled[:7] == [5] * 6 + [2]
    assert max(chunked.predictor.upscaled) <= 5 and sum(chunked.predictor.upscaled[7:]) == len(records)
    assert len(records) == len(expected) > 0
    for a, b in zip(records, expected):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == b["predicted_iou"] and a["bbox"] == b["bbox"]
