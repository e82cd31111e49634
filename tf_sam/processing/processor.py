"""`SamProcessor`: images plus point/box prompts in, model-ready tensors out (like HF's).

Prompts arrive as HF's nested lists, numpy arrays or tensors, or the short forms people
try first (`[x, y]`, `[[x, y], [x, y]]`, `[x0, y0, x1, y1]`). They are put into one
canonical nesting, validated with messages that show the expected shape, padded, then
rescaled into the resized image's frame by `image_ops.scale_coordinates`.
"""

import numbers

import numpy as np
import tensorflow as tf

from tf_sam.processing import image_ops as ops
from tf_sam.processing.image_processor import BatchFeature, SamImageProcessor, _to_numpy

POINT_PAD_VALUE = -10  # HF pads both coordinates and labels of missing points with -10

POINTS_HELP = (
    "Expected input_points=[[[x, y], [x, y]]]  # [image][point][xy], one mask per image; or "
    "[[[[x, y]], [[x, y]]]]  # [image][mask][point][xy], several masks per image. "
    "A single image also accepts [x, y] or [[x, y], [x, y]]."
)
LABELS_HELP = (
    "Expected one label per point, nested like the points without the xy level: "
    "input_labels=[[1, 0]]  # [image][label] for input_points=[[[x, y], [x, y]]], or "
    "[[[1], [1]]]  # [image][mask][label] for [[[[x, y]], [[x, y]]]]. A single image also accepts [1, 0] or 1."
)
BOXES_HELP = (
    "Expected input_boxes=[[[x0, y0, x1, y1], [x0, y0, x1, y1]]]  # [image][box][xyxy]. "
    "A single image also accepts [x0, y0, x1, y1] or [[x0, y0, x1, y1], ...]."
)


def _as_nested(value):
    """Nested lists from lists, numpy arrays and TF / torch tensors, at any level."""
    if isinstance(value, (list, tuple)):
        return [_as_nested(v) for v in value]
    if not isinstance(value, numbers.Number) and (hasattr(value, "__array__") or hasattr(value, "numpy")):
        return _to_numpy(value).tolist()
    return value


def _depth(value, name, help_text):
    """Nesting depth of a list of numbers (0 for a number); uniform or ValueError."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} contains an empty list. {help_text}")
        depths = {_depth(v, name, help_text) for v in value}
        if len(depths) > 1:
            raise ValueError(f"{name} mixes nesting levels. {help_text}")
        return depths.pop() + 1
    if isinstance(value, (numbers.Number, np.number)) and not isinstance(value, complex):
        return 0
    raise ValueError(f"{name} must contain numbers, found {type(value).__name__} {value!r}. {help_text}")


def _canonical(value, name, help_text, leaf_depth, top_depth, num_images, mask_level):
    """Nests `value` to `top_depth` levels, the first being the image.

    `leaf_depth` is the depth of one item (1 for a point or box, 0 for a label). With a
    mask level (points, labels), one level short is HF's `[image][item]` form and gets one
    mask per image; anything shallower is a short form for a single image.
    """
    value = _as_nested(value)
    depth = _depth(value, name, help_text)
    if not leaf_depth <= depth <= top_depth:
        raise ValueError(f"{name} has {depth} nesting level(s). {help_text}")
    if mask_level and depth == top_depth - 1:
        return [[list(item)] for item in value]
    if depth < top_depth:
        if num_images != 1:
            raise ValueError(f"{name} without an image level is only allowed for a single image, got "
                             f"{num_images} images. {help_text}")
        for _ in range(top_depth - depth):
            value = [value]
    return [list(v) for v in value]


def _check_leaves(items, size, name, what, help_text):
    for item in items:
        if len(item) != size:
            raise ValueError(f"{name}: each {what} needs {size} numbers, got {len(item)} in {list(item)}. {help_text}")


class SamProcessor:
    """Prepares images and prompts for SAM and post-processes its masks, like HF's processor.

    Coordinates are rescaled to the resized image exactly as HF does (float64), ragged
    point lists are padded with `-10` points and labels, and the outputs are channels-last.

    Args:
        image_processor: a `SamImageProcessor` (default settings if omitted).

    Example:
        >>> from tf_sam.processing import SamProcessor
        >>> import numpy as np
        >>> processor = SamProcessor()
        >>> out = processor(np.zeros((600, 800, 3), np.uint8), input_points=[[[400, 300]]], input_labels=[[1]])
        >>> out.input_points.numpy().tolist()
        [[[[512.0, 384.0]]]]
    """

    point_pad_value = POINT_PAD_VALUE

    def __init__(self, image_processor=None):
        self.image_processor = image_processor if image_processor is not None else SamImageProcessor()

    @classmethod
    def for_model(cls, model_or_config, **kwargs):
        """A processor following a model's input size.

        Args:
            model_or_config: a model with `.config.vision_config` (`image_size`, `patch_size`),
                a config, or a vision config; see `SamImageProcessor.for_model`.
            **kwargs: other `SamImageProcessor` arguments.

        Returns:
            `SamProcessor`, e.g. 512-px inputs and 128-px masks for a 512/16 model.
        """
        return cls(SamImageProcessor.for_model(model_or_config, **kwargs))

    @classmethod
    def from_pretrained(cls, path):
        """Reads HF's `preprocessor_config.json`.

        Args:
            path: a directory containing it, the file itself, or a Hugging Face Hub id.

        Returns:
            `SamProcessor`.
        """
        return cls(SamImageProcessor.from_pretrained(path))

    def save_pretrained(self, directory):
        """Writes `preprocessor_config.json` in HF's format (HF's `SamProcessor` reads it).

        Args:
            directory: created if missing.

        Returns:
            The path of the written file.
        """
        return self.image_processor.save_pretrained(directory, processor_class="SamProcessor")

    def post_process_masks(self, masks, original_sizes, reshaped_input_sizes, mask_threshold=0.0, binarize=True,
                           pad_size=None, return_tensors="np"):
        """Upscales masks to the original images; see `SamImageProcessor.post_process_masks`.

        Args:
            masks: per image `(point_batch, num_masks, h, w)` logits, or `(B, point_batch, num_masks, h, w)`.
            original_sizes, reshaped_input_sizes: `(B, 2)` from this processor's output.
            mask_threshold, binarize, pad_size, return_tensors: as in `SamImageProcessor`.

        Returns:
            list of `(point_batch, num_masks, H, W)` arrays (bool if `binarize`).
        """
        return self.image_processor.post_process_masks(masks, original_sizes, reshaped_input_sizes, mask_threshold,
                                                        binarize, pad_size, return_tensors)

    def __call__(self, images=None, input_points=None, input_labels=None, input_boxes=None, segmentation_maps=None,
                 return_tensors="tf", *, original_sizes=None):
        """Preprocesses images and prompts.

        Args:
            images: as for `SamImageProcessor.__call__`; may be None with `original_sizes`.
            input_points: `[image][point][xy]`, `[image][mask][point][xy]`, or for one image
                `[x, y]` / `[[x, y], ...]`; lists, arrays or tensors, in original pixels.
            input_labels: one int per point (1 foreground, 0 background), nested like the
                points without the xy level.
            input_boxes: `[image][box][x0, y0, x1, y1]`, or for one image `[x0, y0, x1, y1]`
                / `[[x0, y0, x1, y1], ...]`. Every image needs the same number of boxes.
            segmentation_maps: optional label maps, see `SamImageProcessor.__call__`.
            return_tensors: `"tf"` or `"np"`.
            original_sizes: prompts only: `(B, 2)` `[H, W]` of images processed earlier.

        Returns:
            `BatchFeature` with the image processor's outputs (without images: only the sizes)
            plus, when given, `input_points` `(B, masks, points, 2)`, `input_labels`
            `(B, masks, points)` int64 and `input_boxes` `(B, boxes, 4)`. Coordinates are
            float64 with `"np"` (bit-identical to HF) and float32 with `"tf"`. Missing points
            are padded with `-10`; without labels, ragged points get labels 1 and -10.

        Raises:
            ValueError: for malformed images or prompts, with the expected nesting.
        """
        if return_tensors not in ("tf", "np"):
            raise ValueError(f"return_tensors must be 'tf' or 'np', got {return_tensors!r}.")
        if images is not None:
            out = self.image_processor(images, segmentation_maps=segmentation_maps, return_tensors=return_tensors)
        elif original_sizes is not None:
            sizes = _to_numpy(original_sizes).astype(np.int64).reshape(-1, 2)
            longest = self.image_processor.size["longest_edge"]
            shapes = [ops.get_preprocess_shape(h, w, longest) for h, w in sizes]
            out = BatchFeature(original_sizes=sizes,
                               reshaped_input_sizes=np.array([[int(h), int(w)] for h, w in shapes], np.int64))
        else:
            raise ValueError("Pass images, or original_sizes to process prompts for images processed earlier.")
        original, reshaped = np.asarray(out["original_sizes"]), np.asarray(out["reshaped_input_sizes"])
        if input_labels is not None and input_points is None:
            raise ValueError("input_labels were given without input_points.")
        if input_points is not None:
            points, is_point, labels = self._points_and_labels(input_points, input_labels, len(original))
            scaled = self._scale(points, original, reshaped)
            out["input_points"] = np.where(is_point[..., None], scaled, float(POINT_PAD_VALUE))
            if labels is not None:
                out["input_labels"] = labels
        if input_boxes is not None:
            boxes = self._boxes(input_boxes, len(original))
            # HF casts boxes to float32 before scaling them in float64; so do we, for equal values.
            boxes = boxes.astype(np.float32).astype(np.float64).reshape(len(original), -1, 2, 2)
            out["input_boxes"] = self._scale(boxes, original, reshaped).reshape(len(original), -1, 4)
        if return_tensors == "np":
            return out
        floats = ("input_points", "input_boxes")
        return BatchFeature({k: tf.constant(v, tf.float32) if k in floats else tf.convert_to_tensor(v)
                             for k, v in out.items()})

    def _points_and_labels(self, input_points, input_labels, num_images):
        """`(points (B, masks, N, 2) float64, is_point (B, masks, N), labels (B, masks, N) int64 or None)`."""
        points = _canonical(input_points, "input_points", POINTS_HELP, 1, 4, num_images, True)
        _check_leaves([p for image in points for mask in image for p in mask], 2, "input_points", "point [x, y]",
                      POINTS_HELP)
        if len(points) != num_images:
            raise ValueError(f"input_points has prompts for {len(points)} images but there are {num_images} "
                             f"images. {POINTS_HELP}")
        counts = [[len(mask) for mask in image] for image in points]
        if input_labels is not None:
            labels = _canonical(input_labels, "input_labels", LABELS_HELP, 0, 3, num_images, True)
            label_counts = [[len(mask) for mask in image] for image in labels]
            if label_counts != counts:
                raise ValueError(f"input_labels count per image and mask {label_counts} does not match input_points "
                                 f"{counts}. {LABELS_HELP}")
            flat = np.array([v for image in labels for mask in image for v in mask], np.float64)
            if not (np.isfinite(flat).all() and np.array_equal(flat, np.round(flat))):
                raise ValueError(f"input_labels must be whole numbers. {LABELS_HELP}")
        masks = max(len(c) for c in counts)
        n = max(max(c) for c in counts)
        ragged = any(len(c) != masks or min(c) != n for c in counts)
        out_points = np.zeros((num_images, masks, n, 2))
        is_point = np.zeros((num_images, masks, n), bool)
        out_labels = np.full((num_images, masks, n), POINT_PAD_VALUE, np.int64)
        for i, image in enumerate(points):
            for j, mask in enumerate(image):
                out_points[i, j, :len(mask)] = np.asarray(mask, np.float64)
                is_point[i, j, :len(mask)] = True
                out_labels[i, j, :len(mask)] = labels[i][j] if input_labels is not None else 1
        if not np.isfinite(out_points).all():
            raise ValueError(f"input_points contain NaN or infinite coordinates. {POINTS_HELP}")
        # HF only outputs labels the caller gave; ragged points still need them to mark padding.
        return out_points, is_point, (out_labels if input_labels is not None or ragged else None)

    def _boxes(self, input_boxes, num_images):
        boxes = _canonical(input_boxes, "input_boxes", BOXES_HELP, 1, 3, num_images, False)
        _check_leaves([b for image in boxes for b in image], 4, "input_boxes", "box [x0, y0, x1, y1]", BOXES_HELP)
        if len(boxes) != num_images:
            raise ValueError(f"input_boxes has boxes for {len(boxes)} images but there are {num_images} images. "
                             f"{BOXES_HELP}")
        if len({len(image) for image in boxes}) > 1:
            raise ValueError(f"Every image needs the same number of boxes (SAM has no box padding), got "
                             f"{[len(image) for image in boxes]}. {BOXES_HELP}")
        boxes = np.array(boxes, np.float64)
        if not np.isfinite(boxes).all():
            raise ValueError(f"input_boxes contain NaN or infinite coordinates. {BOXES_HELP}")
        return boxes

    @staticmethod
    def _scale(coords, original_sizes, reshaped_sizes):
        """Scale `(B, ..., 2)` float64 coords image by image into the resized frame."""
        return np.stack([ops.scale_coordinates(c, old, new).numpy()
                         for c, old, new in zip(coords, original_sizes, reshaped_sizes)])
