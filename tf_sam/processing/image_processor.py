"""`SamImageProcessor`: images to SAM model inputs, low-resolution masks back to image size.

Host-side work here is only input validation and the conversions HF does before it resizes
(to RGB, to uint8 for PIL); every pixel operation is in `image_ops`. Outputs are
channels-last: `pixel_values` is `(B, H, W, 3)`.
"""

import json
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from tf_sam.processing import image_ops as ops
from tf_sam.processing.image_ops import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CONFIG_NAME = "preprocessor_config.json"
_PIL_BILINEAR = 2  # the only resample filter SAM uses; HF stores it as an int
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# Traced once with dynamic sizes so each new image size does not pay eager dispatch.
_resize_fn = tf.function(
    ops.resize_longest_side,
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)],
)


class BatchFeature(dict):
    """A dict whose keys are also attributes (`out.pixel_values`), like HF's BatchFeature."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _longest_edge_dict(value, name):
    """`{"longest_edge": n}` from a dict or an int."""
    if isinstance(value, dict):
        if "longest_edge" not in value:
            raise ValueError(f"{name} must look like {{'longest_edge': 1024}}, got {value!r}.")
        value = value["longest_edge"]
    return {"longest_edge": _positive_int(value, f"{name}['longest_edge']")}


def _height_width_dict(value, name):
    """`{"height": h, "width": w}` from a dict or an int (square)."""
    if isinstance(value, dict):
        if not {"height", "width"} <= set(value):
            raise ValueError(f"{name} must look like {{'height': 1024, 'width': 1024}}, got {value!r}.")
        height, width = value["height"], value["width"]
    else:
        height = width = value
    return {"height": _positive_int(height, f"{name}['height']"), "width": _positive_int(width, f"{name}['width']")}


def _to_numpy(value):
    """numpy view of a numpy / TF / torch / array-like value (torch may need detaching)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value)


def _is_image_like(value):
    from PIL import Image

    return isinstance(value, (Image.Image, np.ndarray)) or hasattr(value, "__array__") or hasattr(value, "numpy")


def _image_list(images):
    """A flat list from one image, a list/tuple of images or a 4-D batch array."""
    from PIL import Image

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is an empty list.")
        return list(images)
    if not isinstance(images, Image.Image) and _is_image_like(images):
        try:
            array = _to_numpy(images)
        except Exception:
            return [images]  # _standardize reports what is wrong with it
        if array.ndim == 4:
            return list(array)
    return [images]


def _config_dim(config, key):
    value = config[key] if isinstance(config, dict) else getattr(config, key)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return int(value)


class SamImageProcessor:
    """Prepares images (and label maps) for SAM and post-processes its masks, like HF's.

    Matches `transformers.SamImageProcessor` (PIL backend) with channels-last outputs: the
    longest side is resized to `size["longest_edge"]` with Pillow-exact bilinear
    resampling, pixels are rescaled, normalised and zero-padded at the bottom/right.

    Args:
        do_resize: resize the longest side to `size["longest_edge"]`.
        size: `{"longest_edge": 1024}` (or an int).
        do_rescale: multiply pixels by `rescale_factor`.
        rescale_factor: 1/255 by default.
        do_normalize: subtract `image_mean` and divide by `image_std` per channel.
        image_mean, image_std: 3 floats each (ImageNet's by default).
        do_pad: pad to `pad_size` (`{"height": 1024, "width": 1024}` or an int).
        mask_size: `{"longest_edge": 256}`, the resize target for segmentation maps.
        mask_pad_size: `{"height": 256, "width": 256}`, their padded size.
        do_convert_rgb: turn grayscale and RGBA inputs into RGB (alpha over white, like HF).

    Example:
        >>> from tf_sam.processing import SamImageProcessor
        >>> import numpy as np
        >>> out = SamImageProcessor()(np.zeros((480, 640, 3), np.uint8))
        >>> out.pixel_values.shape, out.reshaped_input_sizes.numpy().tolist()
        (TensorShape([1, 1024, 1024, 3]), [[768, 1024]])
    """

    def __init__(
        self,
        do_resize=True,
        size=None,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        do_pad=True,
        pad_size=None,
        mask_size=None,
        mask_pad_size=None,
        do_convert_rgb=True,
    ):
        self.do_resize = bool(do_resize)
        self.size = _longest_edge_dict(1024 if size is None else size, "size")
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in np.broadcast_to(np.asarray(image_mean, np.float64), (3,))]
        self.image_std = [float(v) for v in np.broadcast_to(np.asarray(image_std, np.float64), (3,))]
        self.do_pad = bool(do_pad)
        self.pad_size = _height_width_dict(1024 if pad_size is None else pad_size, "pad_size")
        self.mask_size = _longest_edge_dict(256 if mask_size is None else mask_size, "mask_size")
        self.mask_pad_size = _height_width_dict(256 if mask_pad_size is None else mask_pad_size, "mask_pad_size")
        self.do_convert_rgb = bool(do_convert_rgb)

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_image_size(cls, image_size, patch_size=16, **kwargs):
        """A processor for a model whose input is `image_size` pixels square.

        Args:
            image_size: int, the model's input side (1024 for SAM).
            patch_size: int, the ViT patch size; low-res masks are `4 * image_size // patch_size`.
            **kwargs: other constructor arguments.

        Returns:
            `SamImageProcessor` with size = pad size = `image_size` and
            mask size = mask pad size = `4 * (image_size // patch_size)`.
        """
        image_size = _positive_int(image_size, "image_size")
        mask_side = 4 * (image_size // _positive_int(patch_size, "patch_size"))
        return cls(size=image_size, pad_size=image_size, mask_size=mask_side, mask_pad_size=mask_side, **kwargs)

    @classmethod
    def for_model(cls, model_or_config, **kwargs):
        """A processor that follows a model's configured input size.

        Args:
            model_or_config: a model with `.config`, a config with `.vision_config` (object
                or dict), or a vision config with `image_size` and `patch_size`.
            **kwargs: other constructor arguments.

        Returns:
            `SamImageProcessor.for_image_size(image_size, patch_size, **kwargs)`.
        """
        config = getattr(model_or_config, "config", model_or_config)
        if isinstance(config, dict):
            vision = config.get("vision_config", config)
        else:
            vision = getattr(config, "vision_config", config)
        try:
            image_size, patch_size = _config_dim(vision, "image_size"), _config_dim(vision, "patch_size")
        except (AttributeError, KeyError, TypeError) as err:
            raise ValueError(
                "for_model needs a model with .config.vision_config.image_size/.patch_size, a config "
                f"with .vision_config, or a vision config; got {type(model_or_config).__name__}."
            ) from err
        return cls.for_image_size(image_size, patch_size, **kwargs)

    def to_dict(self):
        """The configuration in HF's `preprocessor_config.json` layout."""
        return {
            "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize,
            "do_pad": self.do_pad,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "SamImageProcessor",
            "image_std": list(self.image_std),
            "mask_pad_size": dict(self.mask_pad_size),
            "mask_size": dict(self.mask_size),
            "pad_size": dict(self.pad_size),
            "resample": _PIL_BILINEAR,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }

    @classmethod
    def from_dict(cls, config):
        """Builds a processor from an HF-format dict; unknown keys are ignored.

        Raises:
            ValueError: if `resample` is not bilinear (2), the only filter implemented.
        """
        resample = config.get("resample", _PIL_BILINEAR)
        if resample is not None and int(resample) != _PIL_BILINEAR:
            raise ValueError(f"Only resample=2 (PIL bilinear, what SAM uses) is supported, got {resample!r}.")
        names = ("do_resize", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                 "do_pad", "pad_size", "mask_size", "mask_pad_size", "do_convert_rgb")
        return cls(**{k: config[k] for k in names if config.get(k) is not None})

    @classmethod
    def from_pretrained(cls, path):
        """Reads HF's `preprocessor_config.json`.

        Args:
            path: a directory holding `preprocessor_config.json` (or a processor's
                `processor_config.json`), the JSON file itself, or a Hugging Face Hub id
                such as `"facebook/sam-vit-base"` (downloaded with `huggingface_hub`).

        Returns:
            `SamImageProcessor`.

        Raises:
            FileNotFoundError: a local path without a config.
            OSError: a Hub id that could not be downloaded.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            file = os.path.join(path, CONFIG_NAME)
            if not os.path.isfile(file) and os.path.isfile(os.path.join(path, "processor_config.json")):
                file = os.path.join(path, "processor_config.json")
        elif os.path.isfile(path):
            file = path
        elif _HUB_ID.match(path):
            file = _download_from_hub(path)
        else:
            raise FileNotFoundError(f"{path!r} is neither a directory containing {CONFIG_NAME} nor a JSON file.")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {CONFIG_NAME} in {path!r}.")
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
        # A processor_config.json nests the image processor's settings under its own key.
        return cls.from_dict(config.get("image_processor", config))

    def save_pretrained(self, directory, processor_class=None):
        """Writes `preprocessor_config.json` in HF's format (HF's `from_pretrained` reads it).

        Args:
            directory: created if missing.
            processor_class: optional `"processor_class"` entry (`SamProcessor` sets it).

        Returns:
            The path of the written file.
        """
        os.makedirs(directory, exist_ok=True)
        config = self.to_dict()
        if processor_class:
            config["processor_class"] = processor_class
        file = os.path.join(directory, CONFIG_NAME)
        with open(file, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        return file

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"

    # ------------------------------------------------------------------ preprocessing

    def __call__(self, images, segmentation_maps=None, return_tensors="tf"):
        """Preprocesses a batch of images (and optional segmentation maps).

        Args:
            images: one image or a list of images of any sizes: PIL images, `(H, W)`,
                `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` arrays/tensors (uint8, integers in
                [0, 255], or floats), or a `(B, H, W, C)` array. Float images in [0, 1] are
                handled exactly like HF, which rescales them twice; see the warning raised.
            segmentation_maps: optional integer label maps, one per image, each `(H, W)`
                (a list, a PIL image, or a `(B, H, W)` array).
            return_tensors: `"tf"` (tf.Tensor values) or `"np"` (numpy).

        Returns:
            `BatchFeature` with `pixel_values` `(B, pad_h, pad_w, 3)` float32,
            `original_sizes` `(B, 2)` int64 `[H, W]`, `reshaped_input_sizes` `(B, 2)` int64,
            and, with `segmentation_maps`, `labels` `(B, mask_pad_h, mask_pad_w)` int64.

        Raises:
            ValueError: for inputs that are not images (wrong rank, channels, empty, NaN...).
        """
        if return_tensors not in ("tf", "np"):
            raise ValueError(f"return_tensors must be 'tf' or 'np', got {return_tensors!r}.")
        arrays = [self._standardize(image, f"images[{i}]") for i, image in enumerate(_image_list(images))]
        pixel_values, reshaped = zip(*(self._preprocess_one(a, f"images[{i}]") for i, a in enumerate(arrays)))
        if len({tuple(p.shape) for p in pixel_values}) > 1:
            raise ValueError("Images of different sizes cannot be batched with do_pad=False; set do_pad=True.")
        data = {
            "pixel_values": tf.stack(pixel_values),
            "original_sizes": np.array([a.shape[:2] for a in arrays], np.int64),
            "reshaped_input_sizes": np.array(reshaped, np.int64),
        }
        if segmentation_maps is not None:
            data["labels"] = self._preprocess_maps(segmentation_maps, data["original_sizes"])
        convert = tf.convert_to_tensor if return_tensors == "tf" else np.asarray
        return BatchFeature({k: convert(v) for k, v in data.items()})

    def _standardize(self, image, name):
        """A validated `(H, W, C)` numpy array, RGB unless `do_convert_rgb` is off."""
        from PIL import Image

        if isinstance(image, Image.Image):
            image = _pil_to_rgb(image) if self.do_convert_rgb else np.array(image)
        elif _is_image_like(image) and not isinstance(image, (str, bytes)):
            try:
                image = _to_numpy(image)
            except Exception as err:
                raise ValueError(f"{name}: could not read {type(image).__name__} as an array ({err}).") from None
        else:
            raise ValueError(
                f"{name}: expected a PIL image, a numpy array or a tensor of shape (H, W, C), "
                f"got {type(image).__name__}" + (" (load files with PIL.Image.open first)" if isinstance(
                    image, (str, bytes, os.PathLike)) else "") + "."
            )
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
            raise ValueError(f"{name}: expected a numeric image, got dtype {image.dtype}.")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"{name}: expected shape (H, W) or (H, W, C), got {image.shape}.")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"{name}: image is empty, shape {image.shape}.")
        channels = image.shape[-1]
        if channels not in (1, 3, 4):
            hint = (" It looks channels-first; pass (H, W, C), e.g. np.transpose(image, (1, 2, 0))."
                    if image.shape[0] in (1, 3, 4) else "")
            raise ValueError(f"{name}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels last, got shape "
                             f"{image.shape}.{hint}")
        if image.dtype == bool:
            image = image.astype(np.uint8)
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ValueError(f"{name}: image contains NaN or infinite values.")
        if channels != 3:
            if not self.do_convert_rgb:
                raise ValueError(f"{name}: has {channels} channel(s) but do_convert_rgb=False; SAM needs RGB.")
            image = _array_to_rgb(image, name)
        return image

    def _preprocess_one(self, image, name):
        """`(pixel_values (h, w, 3) float32 tensor, [h, w])` for one standardized image."""
        factors = [self.rescale_factor] if self.do_rescale else []
        if self.do_resize:
            image, unit_float = _pil_uint8(image, name)
            if unit_float:
                # HF's PIL round trip maps [0, 1] to uint8 and back before rescaling again.
                factors.insert(0, 1 / 255)
                if self.do_rescale:
                    warnings.warn(
                        f"{name}: float image in [0, 1] with do_rescale=True is rescaled twice, exactly like HF's "
                        "SamImageProcessor (values end up in [0, 1/255]). Pass uint8 images, or do_rescale=False.",
                        stacklevel=4,
                    )
            pixels, size = _resize_fn(image, self.size["longest_edge"])
            size = [int(s) for s in size.numpy()]
        else:
            pixels, size = tf.convert_to_tensor(image), list(image.shape[:2])
        for factor in factors:
            pixels = ops.rescale(pixels, factor)
        if self.do_normalize:
            pixels = ops.normalize(pixels, self.image_mean, self.image_std)
        pixels = tf.cast(pixels, tf.float32)
        if self.do_pad:
            self._check_fits(size, self.pad_size, name)
            pixels = ops.pad_image(pixels, self.pad_size["height"], self.pad_size["width"])
        return pixels, size

    @staticmethod
    def _check_fits(size, pad_size, name):
        if size[0] > pad_size["height"] or size[1] > pad_size["width"]:
            raise ValueError(f"{name}: size {tuple(size)} is larger than pad_size {pad_size}; "
                             "enable do_resize or raise pad_size.")

    def _preprocess_maps(self, segmentation_maps, original_sizes):
        """`(B, mask_pad_h, mask_pad_w)` int64 labels: nearest resize, zero pad (like HF)."""
        from PIL import Image

        if isinstance(segmentation_maps, (list, tuple)):
            maps = list(segmentation_maps)
        elif isinstance(segmentation_maps, Image.Image):
            maps = [segmentation_maps]
        else:
            array = _to_numpy(segmentation_maps)
            maps = list(array) if array.ndim == 3 else [array]
        if len(maps) != len(original_sizes):
            raise ValueError(f"Got {len(maps)} segmentation maps for {len(original_sizes)} images.")
        labels = []
        for i, (label_map, original) in enumerate(zip(maps, original_sizes)):
            name = f"segmentation_maps[{i}]"
            label_map = _to_numpy(label_map)
            if label_map.ndim == 3 and label_map.shape[-1] == 1:
                label_map = label_map[..., 0]
            if label_map.shape != tuple(original):
                raise ValueError(f"{name}: expected an (H, W) map matching its image {tuple(original)}, "
                                 f"got shape {label_map.shape}.")
            if not (np.issubdtype(label_map.dtype, np.number) or label_map.dtype == bool) or (
                    np.issubdtype(label_map.dtype, np.floating)
                    and not np.array_equal(label_map, np.round(label_map))):
                raise ValueError(f"{name}: labels must be whole numbers, got dtype {label_map.dtype}.")
            label_map = tf.constant(label_map.astype(np.int64))
            size = list(original)
            if self.do_resize:
                new_h, new_w = ops.get_preprocess_shape(size[0], size[1], self.mask_size["longest_edge"])
                label_map = ops.pil_nearest_resize(label_map, new_h, new_w)
                size = [int(new_h), int(new_w)]
            if self.do_pad:
                self._check_fits(size, self.mask_pad_size, name)
                label_map = ops.pad_image(label_map, self.mask_pad_size["height"], self.mask_pad_size["width"])
            labels.append(label_map)
        if len({tuple(m.shape) for m in labels}) > 1:
            raise ValueError("Segmentation maps of different sizes cannot be batched with do_pad=False.")
        return tf.stack(labels)

    # ------------------------------------------------------------------ post-processing

    def post_process_masks(self, masks, original_sizes, reshaped_input_sizes, mask_threshold=0.0, binarize=True,
                           pad_size=None, return_tensors="np"):
        """Upscales SAM's low-resolution masks to each original image, like HF.

        Per image: bilinear upsample to the padded size, crop the resized image's area,
        bilinear resize to the original size (torch `F.interpolate` semantics), then
        threshold. Done one image at a time without padded-size intermediates.

        Args:
            masks: list with one `(point_batch, num_masks, h, w)` array/tensor per image, or a
                `(B, point_batch, num_masks, h, w)` array (the model's `pred_masks`).
            original_sizes: `(B, 2)` `[H, W]` per image (the processor's `original_sizes`).
            reshaped_input_sizes: `(B, 2)` resized sizes (the processor's `reshaped_input_sizes`).
            mask_threshold: float, logits above it are foreground.
            binarize: return booleans instead of upscaled logits.
            pad_size: `{"height", "width"}` the model input was padded to; defaults to `pad_size`.
            return_tensors: `"np"` (default) or `"tf"`.

        Returns:
            list of `(point_batch, num_masks, H, W)` arrays, bool if `binarize` else float32.
        """
        pad = _height_width_dict(self.pad_size if pad_size is None else pad_size, "pad_size")
        original_sizes = _to_numpy(original_sizes).reshape(-1, 2)
        reshaped_input_sizes = _to_numpy(reshaped_input_sizes).reshape(-1, 2)
        if not isinstance(masks, (list, tuple)):
            masks = _to_numpy(masks)
            if masks.ndim != 5:
                raise ValueError("masks must be a list of (point_batch, num_masks, h, w) arrays, one per image, or "
                                 f"a (B, point_batch, num_masks, h, w) array; got shape {masks.shape}.")
        if not len(masks) == len(original_sizes) == len(reshaped_input_sizes):
            raise ValueError(f"Got masks for {len(masks)} images but {len(original_sizes)} original sizes and "
                             f"{len(reshaped_input_sizes)} reshaped sizes.")
        outputs = []
        for mask, original, reshaped in zip(masks, original_sizes, reshaped_input_sizes):
            mask = _to_numpy(mask)
            if mask.ndim < 2:
                raise ValueError(f"Each image's masks must be (..., h, w), got shape {mask.shape}.")
            out = ops.postprocess_masks(mask.astype(np.float32, copy=False), original, reshaped,
                                        [pad["height"], pad["width"]], mask_threshold, binarize)
            outputs.append(out if return_tensors == "tf" else out.numpy())
        return outputs

    # ------------------------------------------------- automatic mask generation (HF's API)
    # Thin delegations so HF code written against `SamImageProcessor` runs unchanged; the
    # implementations live in `tf_sam.amg`, shared with `SamAutomaticMaskGenerator`.

    def generate_crop_boxes(self, image, target_size, crop_n_layers=0, overlap_ratio=512 / 1500,
                            points_per_crop=32, crop_n_points_downscale_factor=1, device=None, return_tensors="tf"):
        """Crop boxes and grid points for mask generation; see `tf_sam.amg.generate_crop_boxes`.

        Returns `(crop_boxes (n_crops, 4), points (1, n_points, n_crops, 2), cropped_images,
        input_labels (1, n_points, n_crops))`.
        """
        from tf_sam import amg

        return amg.generate_crop_boxes(image, target_size, crop_n_layers, overlap_ratio, points_per_crop,
                                       crop_n_points_downscale_factor, device)

    def filter_masks(self, masks, iou_scores, original_size, cropped_box_image, pred_iou_thresh=0.88,
                     stability_score_thresh=0.95, mask_threshold=0, stability_score_offset=1, return_tensors="tf"):
        """Score, stability and crop-edge filters plus RLE of one crop's `(P, 3, h, w)` logits.

        Returns `(rle_masks, scores (K,), boxes (K, 4))`; see `tf_sam.amg.filter_masks`.
        """
        from tf_sam import amg

        return amg.filter_masks(masks, iou_scores, original_size, cropped_box_image, pred_iou_thresh,
                                stability_score_thresh, mask_threshold, stability_score_offset)

    def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh,
                                         return_tensors="tf"):
        """NMS over all crops' masks: `(masks, iou_scores (K,), rle_masks, boxes (K, 4))`."""
        from tf_sam import amg

        return amg.post_process_for_mask_generation(all_masks, all_scores, all_boxes, crops_nms_thresh)

    @staticmethod
    def mask_to_rle(masks):
        """`(N, H, W)` bool masks -> N uncompressed COCO RLE dicts (column-major counts)."""
        from tf_sam import amg

        return amg.mask_to_rle(masks)

    @staticmethod
    def rle_to_mask(rle):
        """One uncompressed RLE dict -> `(H, W)` bool numpy mask."""
        from tf_sam import amg

        return amg.rle_to_mask(rle)


def _download_from_hub(repo_id):
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, CONFIG_NAME)
    except Exception as err:
        raise OSError(
            f"Could not fetch {CONFIG_NAME} for {repo_id!r} from the Hugging Face Hub (it cannot be reached or "
            f"the repo does not exist: {type(err).__name__}). Pass a local directory containing {CONFIG_NAME}."
        ) from err


def _pil_to_rgb(image):
    """HF's `convert_to_rgb` for PIL images: transparency is composited over white."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, image).convert("RGB"))
    return np.array(image.convert("RGB"))


def _array_to_rgb(image, name):
    """HF's `convert_to_rgb` for `(H, W, 1|4)` arrays: repeat gray, blend RGBA over white."""
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if np.issubdtype(image.dtype, np.floating) and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"{name}: float RGBA images must lie in [0, 1], got [{image.min()}, {image.max()}].")
    white = 255 if np.issubdtype(image.dtype, np.integer) else 1.0
    alpha = image[..., 3:4] / white
    composite = alpha * image[..., :3] + (1 - alpha) * white
    return np.round(composite).astype(image.dtype) if white == 255 else composite.astype(image.dtype)


def _pil_uint8(image, name):
    """HF's conversion before PIL resizing: `(uint8 image, was_float_in_unit_range)`.

    Whole-number images in [0, 255] are cast (truncating, as HF does); other floats must
    lie in [0, 1] and are scaled by 255 in float64, rounded to float32, then truncated.
    """
    if image.dtype == np.uint8:
        return image, False
    if np.allclose(image, image.astype(np.int64)):
        if image.min() < 0 or image.max() > 255:
            raise ValueError(f"{name}: integer pixel values must lie in [0, 255], got [{image.min()}, {image.max()}].")
        return image.astype(np.uint8), False
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"{name}: float pixel values must lie in [0, 1] (or be whole numbers in [0, 255]), "
                         f"got [{image.min()}, {image.max()}].")
    return (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True
