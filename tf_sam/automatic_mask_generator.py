"""`SamAutomaticMaskGenerator`: Meta's "segment everything" on top of `SamPredictor`.

A grid of single-point prompts is decoded over the image (and optionally over overlapping
crops); masks are filtered by predicted IoU, stability and crop-edge contact, deduplicated
with box NMS, and returned as Meta's records.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_sam import amg
from tf_sam.predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Full-size float logits upscaled at once (32 Mi floats = 128 MiB): bounds the generator's
# post-processing memory whatever the image size or points_per_batch.
_UPSCALE_PIXELS = 1 << 25


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts, like Meta's class.

    Args:
        model: a `tf_sam.SamModel`.
        points_per_side: int, grid points along each side (`points_per_side**2` prompts per
            crop); None when `point_grids` is given.
        points_per_batch: int, prompts decoded together. Only masks that pass the score
            filter are upscaled to full size, a few at a time, so peak memory depends little
            on it or on `points_per_side`.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit offset used for the stability score.
        box_nms_thresh: box IoU above which NMS drops duplicates within a crop.
        crop_n_layers: extra crop layers; layer `i` has `(2**i)**2` crops.
        crop_nms_thresh: box IoU threshold of the NMS across crops (smaller crops win).
        crop_overlap_ratio: first-layer crop overlap as a fraction of the image's short side.
        crop_n_points_downscale_factor: layer `i` uses `points_per_side / factor**i` a side.
        point_grids: optional list of `(N_i, 2)` grids in `[0, 1]`, one per layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
            pixels, then re-run NMS (Meta's postprocessing, without OpenCV).
        output_mode: "binary_mask" (`(H, W)` bool arrays), "uncompressed_rle" or "coco_rle".
        processor: a `SamProcessor`; by default one following the model's input size.
        mask_threshold: logit threshold that binarises masks.

    Example:
        >>> generator = SamAutomaticMaskGenerator(model)
        >>> records = generator.generate(photo)            # (H, W, 3) uint8 or PIL image
        >>> sorted(records[0])
        ['area', 'bbox', 'crop_box', 'point_coords', 'predicted_iou', 'segmentation', 'stability_score']
    """

    def __init__(self, model, points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
                 stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0,
                 crop_nms_thresh=0.7, crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1,
                 point_grids=None, min_mask_region_area=0, output_mode="binary_mask", processor=None,
                 mask_threshold=0.0):
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}.")
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}.")
        if int(crop_n_layers) < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}.")
        if points_per_side is not None:
            if int(points_per_side) < 1:
                raise ValueError(f"points_per_side must be at least 1, got {points_per_side}.")
            self.point_grids = amg.build_all_layer_point_grids(
                int(points_per_side), int(crop_n_layers), crop_n_points_downscale_factor)
        else:
            self.point_grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in point_grids]
            if len(self.point_grids) < int(crop_n_layers) + 1:
                raise ValueError(f"point_grids needs one grid per layer ({int(crop_n_layers) + 1}), "
                                 f"got {len(self.point_grids)}.")
        self.predictor = SamPredictor(model, processor)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode
        self.mask_threshold = float(mask_threshold)

    @property
    def model(self):
        return self.predictor.model

    @property
    def processor(self):
        return self.predictor.processor

    def num_batches(self, image_size):
        """Decoder calls `generate` makes for an image of `image_size = (H, W)` (for progress bars)."""
        _, layer_idxs = amg.generate_crop_boxes_xyxy(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        per = self.points_per_batch
        return sum(-(-len(self.point_grids[layer]) // per) for layer in layer_idxs)

    # ------------------------------------------------------------------ public
    def generate(self, image, progress=None):
        """Segments everything in `image`.

        Args:
            image: PIL image or `(H, W, 3)` uint8 array (RGB).
            progress: optional callable invoked once after each decoded point batch, e.g.
                a progress bar's update.

        Returns:
            list of dicts, one per mask: `segmentation` (`(H, W)` bool array, or an RLE dict
            per `output_mode`), `bbox` `[x, y, w, h]`, `area` int, `predicted_iou` float,
            `point_coords` `[[x, y]]`, `stability_score` float, `crop_box` `[x, y, w, h]`.
        """
        image = amg._to_hwc_uint8(image)
        if image.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 RGB image, got dtype {image.dtype}.")
        data = self._generate_masks(image, progress)
        if self.min_mask_region_area > 0 and len(data["rles"]):
            data = self._postprocess_small_regions(data, max(self.box_nms_thresh, self.crop_nms_thresh))

        if self.output_mode == "coco_rle":
            segmentations = [amg.coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [amg.rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = [amg.rle_counts_to_list(rle) for rle in data["rles"]]
        records = []
        for i, rle in enumerate(data["rles"]):
            records.append({
                "segmentation": segmentations[i],
                "area": amg.area_from_rle(rle),
                "bbox": [int(v) for v in amg.box_xyxy_to_xywh(data["boxes"][i])],
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [[float(v) for v in data["points"][i]]],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": [int(v) for v in amg.box_xyxy_to_xywh(data["crop_boxes"][i])],
            })
        return records

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _empty():
        return {"rles": [], "boxes": np.zeros((0, 4), np.int64), "iou_preds": np.zeros((0,), np.float32),
                "points": np.zeros((0, 2), np.float64), "stability_score": np.zeros((0,), np.float32),
                "crop_boxes": np.zeros((0, 4), np.int64)}

    @staticmethod
    def _cat(parts):
        if not parts:
            return SamAutomaticMaskGenerator._empty()
        return {key: [r for p in parts for r in p[key]] if key == "rles"
                else np.concatenate([p[key] for p in parts], axis=0) for key in parts[0]}

    @staticmethod
    def _take(data, keep):
        keep = np.asarray(keep, np.int64)
        return {key: [value[i] for i in keep] if key == "rles" else value[keep] for key, value in data.items()}

    def _generate_masks(self, image, progress):
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = amg.generate_crop_boxes_xyxy(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = self._cat([self._process_crop(image, box, layer, orig_size, progress)
                          for box, layer in zip(crop_boxes, layer_idxs)])
        if len(crop_boxes) > 1 and len(data["rles"]):
            # Among duplicates across crops prefer the smallest crop's: it saw the object at
            # the highest resolution.
            scores = 1.0 / amg.box_area(data["crop_boxes"])
            data = self._take(data, amg.nms(data["boxes"], scores, self.crop_nms_thresh))
        return data

    def _process_crop(self, image, crop_box, layer_idx, orig_size, progress):
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        self.predictor.set_image(crop)  # one encoder pass per crop
        points = self.point_grids[layer_idx] * np.array([[crop_w, crop_h]], np.float64)
        try:
            # Two passes keep memory independent of the grid: the first scores every mask
            # and keeps only boxes and scores, NMS (which needs nothing else) picks the
            # survivors, and only their masks are decoded again and stored. Meta's version
            # holds every candidate's RLE until the crop's NMS, which grows with
            # points_per_side.
            parts = []
            for start in range(0, len(points), self.points_per_batch):
                parts.append(self._score_batch(points[start:start + self.points_per_batch], crop_box, orig_size))
                if progress is not None:
                    progress()
            data = self._cat(parts)
            if not len(data["boxes"]):
                return self._empty()
            data = self._take(data, amg.nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
            data["rles"], data["boxes"] = self._decode_kept_masks(
                data["points"], data.pop("mask_index"), crop_box, orig_size)
        finally:
            self.predictor.reset_image()
        data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = amg.uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64)[None], (len(data["rles"]), 1))
        return data

    def _decode_points(self, points):
        """One foreground click per prompt: `(N, 2)` crop pixels -> `low_res (N, 3, 256, 256)`, `iou (N, 3)`."""
        return self.predictor.predict_batch_low_res(
            points[:, None, :], np.ones((len(points), 1), np.int64), multimask_output=True)

    def _upscale_chunks(self, low_res):
        """Yields `(start, logits (n, h, w))` at the crop's size, a bounded number at a time."""
        crop_h, crop_w = self.predictor.original_size
        chunk = max(1, _UPSCALE_PIXELS // (crop_h * crop_w))
        for start in range(0, len(low_res), chunk):
            yield start, self.predictor.upscale_masks(low_res[start:start + chunk], binarize=False)

    def _score_batch(self, points, crop_box, orig_size):
        """Pass one: scores, stability and boxes of one point batch's masks; no masks kept."""
        orig_h, orig_w = orig_size
        low_res, iou_preds = self._decode_points(points)
        num_masks = low_res.shape[1]
        low_res = low_res.reshape((-1,) + low_res.shape[2:])
        iou_preds = iou_preds.reshape(-1)
        # The score filter needs no pixels, so it runs before anything is upscaled: full-size
        # maps of a whole batch (64 x 3 x H x W floats, 1.6 GB for a 1800x1200 photo) never
        # exist at once.
        candidates = np.arange(len(iou_preds))
        if self.pred_iou_thresh > 0.0:
            candidates = np.flatnonzero(iou_preds > self.pred_iou_thresh)
        index, stability, boxes = [], [], []
        for start, logits in self._upscale_chunks(low_res[candidates]):
            score = amg.calculate_stability_score(logits, self.mask_threshold, self.stability_score_offset)
            keep = np.arange(len(logits))
            if self.stability_score_thresh > 0.0:
                keep = np.flatnonzero(score >= self.stability_score_thresh)
            box = np.asarray(amg.batched_mask_to_box(logits[keep] > self.mask_threshold), np.int64)
            near = np.asarray(amg.is_box_near_crop_edge(box, crop_box, [0, 0, orig_w, orig_h]))
            inner = keep[~near]
            index.append(candidates[start + inner])
            stability.append(score[inner])
            boxes.append(box[~near])
        index = np.concatenate(index) if index else np.zeros((0,), np.int64)
        return {
            "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64),
            "iou_preds": iou_preds[index].astype(np.float32),
            "points": np.repeat(points, num_masks, axis=0)[index],
            "stability_score": (np.concatenate(stability) if stability else np.zeros((0,))).astype(np.float32),
            "mask_index": index % num_masks,
        }

    def _decode_kept_masks(self, points, mask_index, crop_box, orig_size):
        """Pass two: RLEs (in the image's frame) and crop-frame boxes of the NMS survivors."""
        orig_h, orig_w = orig_size
        rles, boxes = [], []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start:start + self.points_per_batch]
            low_res, _ = self._decode_points(batch)
            low_res = low_res[np.arange(len(batch)), mask_index[start:start + len(batch)]]
            for _, logits in self._upscale_chunks(low_res):
                binary = logits > self.mask_threshold
                del logits
                boxes.append(np.asarray(amg.batched_mask_to_box(binary), np.int64))
                rles.extend(amg.mask_to_rle(amg.uncrop_masks(binary, crop_box, orig_h, orig_w), as_list=False))
        return rles, np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64)

    def _postprocess_small_regions(self, data, nms_thresh):
        """Meta's cleanup: fill small holes, drop small islands, then NMS preferring untouched masks."""
        new_masks, scores = [], []
        for rle in data["rles"]:
            mask = amg.rle_to_mask(rle)
            mask, changed_holes = amg.remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = amg.remove_small_regions(mask, self.min_mask_region_area, "islands")
            new_masks.append(mask)
            scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
        boxes = amg.batched_mask_to_box(np.stack(new_masks)).numpy().astype(np.int64)
        keep = amg.nms(boxes, np.asarray(scores, np.float32), nms_thresh)
        data = dict(data, rles=list(data["rles"]), boxes=data["boxes"].copy())
        for i in keep:
            if scores[i] == 0.0:
                data["rles"][i] = amg.mask_to_rle(new_masks[i][None], as_list=False)[0]
                data["boxes"][i] = boxes[i]
        return self._take(data, keep)
