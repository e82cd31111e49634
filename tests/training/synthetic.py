"""Synthetic instance-segmentation data: textured shapes on textured backgrounds."""

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from tf_sam import amg


def _texture(rng, height, width):
    """A random texture: a colour, stripes or checks of a second colour, and pixel noise."""
    base = rng.uniform(40, 215, size=3)
    other = np.clip(base + rng.choice([-1, 1], size=3) * rng.uniform(30, 70, size=3), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width]
    period = rng.uniform(3, 9)
    angle = rng.uniform(0, np.pi)
    kind = rng.integers(3)
    if kind == 0:
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 1:
        pattern = ((xx // int(period)) + (yy // int(period))) % 2 == 0
    else:
        pattern = rng.random((height, width)) < 0.3
    image = np.where(pattern[..., None], base, other)
    return np.clip(image + rng.normal(0, 8, size=image.shape), 0, 255)


def make_example(rng, height=64, width=80, max_shapes=3):
    """`(image (H, W, 3) uint8, label_map (H, W) uint8)` with 1..max_shapes shapes."""
    image = _texture(rng, height, width)
    labels = np.zeros((height, width), np.uint8)
    count = int(rng.integers(1, max_shapes + 1))
    for instance in range(1, count + 1):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        size = rng.uniform(0.25, 0.45) * min(height, width)
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=1)
        elif kind == 1:
            draw.rectangle([cx - size / 2, cy - size / 3, cx + size / 2, cy + size / 3], fill=1)
        else:
            draw.polygon([(cx, cy - size / 2), (cx - size / 2, cy + size / 2), (cx + size / 2, cy + size / 2)], fill=1)
        shape = np.asarray(canvas, bool)
        texture = _texture(rng, height, width)
        image[shape] = texture[shape]
        labels[shape] = instance
    # Drop instances fully covered by later ones; renumber 1..K.
    ids = [i for i in np.unique(labels) if i]
    remap = np.zeros(256, np.uint8)
    remap[ids] = np.arange(1, len(ids) + 1)
    return image.round().astype(np.uint8), remap[labels]


def write_folder_dataset(root, count, seed=0, height=64, width=80):
    """Writes `root/images/*.png` and `root/masks/*.png`; returns the two folders."""
    rng = np.random.default_rng(seed)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    for i in range(count):
        image, labels = make_example(rng, height, width)
        Image.fromarray(image).save(os.path.join(images, f"img_{i:03d}.png"))
        Image.fromarray(labels, mode="L").save(os.path.join(masks, f"img_{i:03d}.png"))
    return images, masks


def write_coco_dataset(root, count, seed=0, height=64, width=80, use_rle_every=2):
    """Writes images and a COCO JSON (polygons from shapes' outlines are not exact, so some
    annotations use RLE); returns `(annotation_file, images_dir, label_maps)`."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "coco_images")
    os.makedirs(images_dir, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    label_maps = []
    ann_id = 1
    for i in range(count):
        image, labels = make_example(rng, height, width)
        name = f"c_{i:03d}.png"
        Image.fromarray(image).save(os.path.join(images_dir, name))
        coco["images"].append({"id": i + 1, "file_name": name, "height": height, "width": width})
        label_maps.append(labels)
        for instance in range(1, labels.max() + 1):
            mask = labels == instance
            ys, xs = np.nonzero(mask)
            if ann_id % use_rle_every == 0:
                segmentation = amg.mask_to_rle(mask[None])[0]
            else:  # the bounding rectangle as a polygon: exact for rectangles only
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                segmentation = [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]
            coco["annotations"].append({
                "id": ann_id, "image_id": i + 1, "category_id": 1, "segmentation": segmentation,
                "area": int(mask.sum()), "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                                  int(np.ptp(ys)) + 1], "iscrowd": 0,
            })
            ann_id += 1
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path, images_dir, label_maps
