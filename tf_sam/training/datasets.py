"""`tf.data` pipelines for fine-tuning SAM on instance masks.

Two sources are supported:

* a folder of images and a folder of instance-mask PNGs with the same file stems, one
  instance id per pixel value (0 = background);
* a COCO-format annotation file (polygons, compressed or uncompressed RLE); pycocotools
  decodes when installed, otherwise a built-in decoder (Pillow polygons, pure-Python RLE).

Every example is checked once when listed (file present, image readable, mask the
image's size, at least one instance) so that bad data fails with the file's name instead
of deep inside a `tf.data` iterator; `on_error="skip"` drops such examples with a warning.

The pipeline has two stages. `image_dataset` decodes and preprocesses each image with
the shared processor ops (`preprocess_image`: Pillow-exact resize, rescale, normalise,
pad) and resizes its label map the same way (Pillow nearest), giving
`{"pixel_values": (S, S, 3) float32, "label_map": (S, S) int32}` with -1 in the padding.
`prompt_dataset` then samples prompts (`PromptSampler`), shuffles, batches and
prefetches. Splitting the stages lets `freezing.cache_image_embeddings` swap pixels for
precomputed embeddings in between.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings

import numpy as np
import tensorflow as tf

from tf_sam.processing import image_ops
from tf_sam.training.prompts import PromptSampler

__all__ = [
    "DatasetError", "Example", "list_folder_examples", "list_coco_examples", "split_examples", "image_dataset",
    "prompt_dataset", "build_datasets", "decode_coco_segmentation", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """Bad training data; the message names the offending file."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One training image: its path, and a mask PNG path or COCO annotations (JSON text)."""

    image: str
    mask: str | None = None
    annotations: str | None = None
    height: int = 0
    width: int = 0


def _report(problem, on_error):
    if on_error == "skip":
        warnings.warn(f"skipping: {problem}", stacklevel=3)
    else:
        raise DatasetError(problem)


def _image_size(path):
    """`(width, height)` of an image file; raises DatasetError naming it when unreadable."""
    from PIL import Image

    if not os.path.isfile(path):
        raise DatasetError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            size = image.size
            image.load()  # verify() misses truncated JPEGs; a full decode does not
    except Exception as e:  # Pillow raises many types for a bad file
        raise DatasetError(f"cannot read image {path}: {e}") from None
    return size


def read_label_map(path):
    """An instance-mask PNG as `(H, W)` int32 ids, keeping palette indices and 16-bit values.

    RGB(A) masks are accepted only when their colour channels are equal (grey saved as RGB).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError:
        raise DatasetError(f"mask file {path} does not exist") from None
    except Exception as e:
        raise DatasetError(f"cannot read mask {path}: {e}") from None
    if array.ndim == 3:
        colour = array[..., :3]
        if not (np.all(colour[..., 0] == colour[..., 1]) and np.all(colour[..., 0] == colour[..., 2])):
            raise DatasetError(
                f"mask {path} is a colour ({mode}) image; save instance ids as a single-channel PNG "
                "(mode L, P or I;16), one id per pixel value"
            )
        array = colour[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array.astype(np.int32)


def list_folder_examples(images_dir, masks_dir, on_error="raise"):
    """Pairs every image in `images_dir` with `masks_dir/<stem>.png` and validates both.

    Args:
        images_dir: folder of images (png, jpg, ...).
        masks_dir: folder of instance-mask PNGs named like the images.
        on_error: "raise" (a `DatasetError` naming the file) or "skip" (warn and drop).

    Returns:
        list of `Example`, sorted by image name.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not os.path.isdir(folder):
            raise DatasetError(f"{what} folder {folder} does not exist")
    examples = []
    names = sorted(n for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DatasetError(f"images folder {images_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    for name in names:
        image_path = os.path.join(images_dir, name)
        mask_path = os.path.join(masks_dir, os.path.splitext(name)[0] + ".png")
        try:
            width, height = _image_size(image_path)
            if not os.path.isfile(mask_path):
                raise DatasetError(f"mask file {mask_path} for image {image_path} does not exist")
            labels = read_label_map(mask_path)
            if labels.shape != (height, width):
                raise DatasetError(
                    f"mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} but image {image_path} is "
                    f"{width}x{height}; they must be the same size"
                )
            if not np.any(labels > 0):
                raise DatasetError(f"mask {mask_path} is empty (no pixel above 0, so no instance to train on)")
        except DatasetError as e:
            _report(str(e), on_error)
            continue
        examples.append(Example(image=image_path, mask=mask_path, height=height, width=width))
    if not examples:
        raise DatasetError(f"no usable examples in {images_dir} and {masks_dir}")
    return examples


def decode_coco_segmentation(segmentation, height, width):
    """One COCO `segmentation` (polygon list or RLE dict) as an `(H, W)` uint8 {0, 1} mask.

    Uses pycocotools when installed, else Pillow for polygons and a NumPy RLE decoder.
    """
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        coco_mask = None
    if coco_mask is not None:
        if isinstance(segmentation, list):
            rles = coco_mask.frPyObjects(segmentation, height, width)
            rle = coco_mask.merge(rles)
        elif isinstance(segmentation.get("counts"), list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        return np.asarray(coco_mask.decode(rle), dtype=np.uint8)
    if isinstance(segmentation, list):
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([float(v) for v in polygon], fill=1, outline=1)
        return np.asarray(canvas, dtype=np.uint8)
    from tf_sam import amg

    rle = {"size": segmentation.get("size", [height, width]), "counts": segmentation["counts"]}
    return amg.coco_decode_rle(rle).astype(np.uint8)


def coco_label_map(annotations_json, height, width):
    """Rasterises an image's COCO annotations into one `(H, W)` int32 instance map.

    Larger objects are painted first so a small object lying on a large one keeps its
    pixels (a label map gives each pixel one owner). Ids are 1..K in that order.
    """
    annotations = json.loads(annotations_json)
    labels = np.zeros((height, width), dtype=np.int32)
    masks = [decode_coco_segmentation(a["segmentation"], height, width) for a in annotations]
    order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
    for new_id, i in enumerate(order, start=1):
        labels[masks[i] > 0] = new_id
    return labels


def list_coco_examples(annotation_file, images_dir=None, on_error="raise", include_crowd=False):
    """Reads a COCO instances JSON into validated `Example`s (one per image with objects).

    Args:
        annotation_file: COCO JSON with `images` and `annotations` (segmentation as
            polygons or RLE).
        images_dir: where `file_name`s are found (default: the JSON's folder).
        on_error: "raise" or "skip" (warn and drop) for missing/corrupt images, size
            mismatches, undecodable or empty annotations.
        include_crowd: keep `iscrowd` annotations (SAM fine-tuning usually drops them).

    Returns:
        list of `Example` with `annotations` as JSON text.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    try:
        with open(annotation_file) as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"COCO annotation file {annotation_file} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"COCO annotation file {annotation_file} is not valid JSON: {e}") from None
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise DatasetError(f"{annotation_file} is not a COCO instances file (needs 'images' and 'annotations')")
    images_dir = images_dir or os.path.dirname(os.path.abspath(annotation_file))
    by_image = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    examples = []
    for info in sorted(coco["images"], key=lambda i: str(i.get("file_name"))):
        path = os.path.join(images_dir, info["file_name"])
        anns = by_image.get(info["id"], [])
        try:
            width, height = _image_size(path)
            if (info.get("height", height), info.get("width", width)) != (height, width):
                raise DatasetError(
                    f"image {path} is {width}x{height} but {annotation_file} says "
                    f"{info.get('width')}x{info.get('height')}"
                )
            if not anns:
                raise DatasetError(f"image {path} has no annotations in {annotation_file} (empty mask)")
            kept = []
            for ann in anns:
                try:
                    mask = decode_coco_segmentation(ann["segmentation"], height, width)
                except Exception as e:
                    raise DatasetError(f"annotation {ann.get('id')} of image {path} cannot be decoded: {e}") from None
                if mask.shape != (height, width):
                    raise DatasetError(
                        f"annotation {ann.get('id')} of image {path} is {mask.shape[1]}x{mask.shape[0]}, "
                        f"image is {width}x{height}"
                    )
                if mask.any():
                    kept.append({"id": ann.get("id"), "segmentation": ann["segmentation"]})
            if not kept:
                raise DatasetError(f"every annotation of image {path} is empty")
        except DatasetError as e:
            _report(str(e), on_error)
            continue
        examples.append(Example(image=path, annotations=json.dumps(kept), height=height, width=width))
    if not examples:
        raise DatasetError(f"no usable examples in {annotation_file}")
    return examples


def split_examples(examples, validation_split=0.0, seed=0):
    """Shuffles (seeded) and splits examples into `(train, validation)` lists.

    With `0 < validation_split < 1` at least one example goes to each side when there are two.
    """
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    n_val = int(round(len(examples) * validation_split))
    if validation_split > 0 and len(examples) >= 2:
        n_val = min(max(n_val, 1), len(examples) - 1)
    return examples[n_val:], examples[:n_val]


def _load_label_map(example_mask, example_ann, height, width):
    mask = example_mask.decode() if isinstance(example_mask, bytes) else example_mask
    if mask:
        return read_label_map(mask)
    ann = example_ann.decode() if isinstance(example_ann, bytes) else example_ann
    return coco_label_map(ann, int(height), int(width))


def image_dataset(examples, image_size):
    """Decodes and preprocesses examples: stage one of the pipeline (unbatched, unshuffled).

    Args:
        examples: list of `Example`.
        image_size: S, the model's input side (`config.vision_config.image_size`).

    Returns:
        `tf.data.Dataset` of `{"pixel_values": (S, S, 3) float32, "label_map": (S, S) int32}`;
        the label map is -1 in the padding, so prompt sampling knows where the image is.
    """
    if not examples:
        raise DatasetError("no examples to build a dataset from")
    table = {
        "image": [e.image for e in examples], "mask": [e.mask or "" for e in examples],
        "annotations": [e.annotations or "" for e in examples],
        "height": [e.height for e in examples], "width": [e.width for e in examples],
    }

    def load(record):
        raw = tf.io.read_file(record["image"])
        image = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
        pixels, reshaped = image_ops.preprocess_image(image, longest_edge=image_size, pad_size=(image_size, image_size))
        # Masks go through Pillow (palette and 16-bit PNGs, COCO RLE), hence numpy_function.
        labels = tf.numpy_function(
            _load_label_map, [record["mask"], record["annotations"], record["height"], record["width"]], tf.int32,
        )
        labels = tf.reshape(labels, tf.shape(image)[:2])
        labels = image_ops.pil_nearest_resize(labels, reshaped[0], reshaped[1])
        labels = image_ops.pad_image(labels, image_size, image_size, value=-1)
        pixels = tf.ensure_shape(pixels, (image_size, image_size, 3))
        labels = tf.ensure_shape(labels, (image_size, image_size))
        return {"pixel_values": pixels, "label_map": labels}

    return tf.data.Dataset.from_tensor_slices(table).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def prompt_dataset(images, sampler, batch_size, shuffle=True, repeat=False, seed=None, cache=True,
                   shuffle_buffer=256, drop_remainder=False, fixed_prompts=False):
    """Stage two: caches decoded images, shuffles, samples prompts, batches, prefetches.

    Args:
        images: dataset from `image_dataset` (or with `image_embeddings` instead of pixels).
        sampler: a `PromptSampler`.
        batch_size: images per batch (each with `sampler.num_prompts` prompts).
        shuffle: reshuffle every epoch.
        repeat: repeat forever (then pass `steps_per_epoch` to `fit`).
        seed: shuffle and prompt seed: with one, every run draws the same prompts (each epoch
            its own); None draws from TensorFlow's global random state, not reproducibly.
        cache: keep decoded images in memory (decode once; prompts are still redrawn each epoch).
        drop_remainder: static batch size (needed by some distribution setups).
        fixed_prompts: draw prompts once and keep them (for validation: comparable numbers
            across epochs and between models).

    Returns:
        `tf.data.Dataset` of `(x, y)`: `x` with `pixel_values (B, S, S, 3)` (or
        `image_embeddings (B, h, w, C)`) and the sampler's prompt tensors, `y` with
        `masks (B, P, L, L)` and `valid (B, P)`.
    """
    def seeded(ds):
        if seed is None:
            return ds
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        return tf.data.Dataset.zip(ds, seeds).map(lambda element, s: {**element, "seed": s})

    if fixed_prompts:
        ds = seeded(images).map(sampler).cache()
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    ds = images.cache() if cache else images
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = seeded(ds).map(sampler, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def sampler_for(config, **kwargs):
    """A `PromptSampler` sized for a `SamConfig` (input side S, low-res mask side L)."""
    vision = config.vision_config
    return PromptSampler(
        image_size=vision.image_size, mask_size=4 * (vision.image_size // vision.patch_size), **kwargs
    )


def build_datasets(config, images_dir=None, masks_dir=None, coco=None, coco_images_dir=None, batch_size=2,
                   validation_split=0.0, seed=0, on_error="raise", prompt_options=None, shuffle=True,
                   validation_prompt_options=None, embedding_model=None):
    """Train/validation datasets from a folder pair or a COCO file, for a model's config.

    Args:
        config: the model's `SamConfig` (input and mask sizes).
        images_dir, masks_dir: folder source; or `coco` (+ optional `coco_images_dir`).
        batch_size: images per batch.
        validation_split: fraction of images held out.
        seed: split and shuffle seed.
        on_error: "raise" or "skip" for bad examples.
        prompt_options: `PromptSampler` keyword arguments for training.
        validation_prompt_options: same for validation (default: the training ones).
        embedding_model: a `SamModel` whose (frozen) image encoder precomputes every image's
            embeddings once (`freezing.cache_image_embeddings`); batches then carry
            `image_embeddings` instead of `pixel_values`.

    Returns:
        `(train, validation, info)`: datasets of `(x, y)` (validation is None without a
        split) and a dict with the example lists under `train_examples`/`validation_examples`.
    """
    if coco is not None:
        if images_dir is not None or masks_dir is not None:
            raise ValueError("give either a COCO file or images and masks folders, not both")
        examples = list_coco_examples(coco, coco_images_dir, on_error=on_error)
    else:
        if images_dir is None or masks_dir is None:
            raise ValueError("give both an images folder and a masks folder (or a COCO file)")
        examples = list_folder_examples(images_dir, masks_dir, on_error=on_error)
    train_ex, val_ex = split_examples(examples, validation_split, seed)
    options = dict(prompt_options or {})
    sampler = sampler_for(config, **options)
    size = config.vision_config.image_size

    def images(examples):
        ds = image_dataset(examples, size)
        if embedding_model is not None:
            from tf_sam.training.freezing import cache_image_embeddings

            ds = cache_image_embeddings(embedding_model, ds, batch_size=max(batch_size, 1))
        return ds

    train = prompt_dataset(images(train_ex), sampler, batch_size, shuffle=shuffle, seed=seed)
    val = None
    if val_ex:
        val_sampler = sampler_for(config, **dict(validation_prompt_options or options))
        val = prompt_dataset(images(val_ex), val_sampler, batch_size, shuffle=False, fixed_prompts=True, seed=seed)
    return train, val, {"train_examples": train_ex, "validation_examples": val_ex}
