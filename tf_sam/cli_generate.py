"""`tf-sam generate`: segment everything in a photo (Meta's automatic mask generator).

The command writes a JSON file of Meta-style records with COCO RLE masks and, optionally, an overlay PNG in
which every mask has its own colour. Progress goes to stderr; expected failures raise
`tf_sam.cli.CliError` (one line, non-zero exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

DEFAULT_CHECKPOINT = "facebook/sam-vit-base"


def _colours(count, seed=0):
    """`(count, 3)` uint8 distinct-ish colours: golden-ratio hues, shuffled deterministically."""
    import colorsys

    import numpy as np

    hues = (np.arange(count) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues]
    colours = (np.array(rgb, np.float32).reshape(-1, 3) * 255).round().astype(np.uint8)
    return colours[np.random.default_rng(seed).permutation(count)] if count else colours


def render_overlay(image, masks, alpha=0.5):
    """The photo with every mask tinted in its own colour and outlined.

    Args:
        image: `(H, W, 3)` uint8 array or PIL image.
        masks: list of `(H, W)` bool arrays; drawn largest first so small masks stay visible.
        alpha: opacity of the tint.

    Returns:
        PIL RGB image of the photo's size.
    """
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32).copy()
    order = sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i])))
    colours = _colours(len(masks)).astype(np.float32)
    for rank, i in enumerate(order):
        mask = np.asarray(masks[i], bool)
        pixels[mask] = (1 - alpha) * pixels[mask] + alpha * colours[rank]
        # A thin outline keeps touching masks of similar colour apart.
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        pixels[edge] = colours[rank] * 0.6
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))


def register(subparsers):
    """Adds the `generate` subcommand to an argparse `subparsers` object; returns its parser."""
    p = subparsers.add_parser("generate", help="segment everything in a photo (automatic mask generation)")
    p.add_argument("image", help="photo to segment (any format Pillow reads)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"anything SamModel.from_pretrained takes (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--points-per-side", type=int, default=32, metavar="N",
                   help="grid of N x N point prompts per crop (default 32)")
    p.add_argument("--points-per-batch", type=int, default=64, metavar="B",
                   help="prompts decoded together; lower it to save memory (default 64)")
    p.add_argument("--crop-layers", type=int, default=0, metavar="K",
                   help="also run on 4, 16, ... overlapping crops for K layers (default 0)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="minimum predicted IoU (default 0.88)")
    p.add_argument("--stability-score-thresh", type=float, default=0.95,
                   help="minimum stability score (default 0.95)")
    p.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU for duplicate removal (default 0.7)")
    p.add_argument("--min-mask-region-area", type=int, default=0, metavar="PIXELS",
                   help="fill holes and drop islands smaller than this (default 0: off)")
    p.add_argument("--rle", choices=["coco", "uncompressed"], default="coco",
                   help="mask encoding in the JSON: COCO compressed strings (pycocotools) or count lists")
    p.add_argument("--output", default="masks.json", help="where to write the records (default masks.json)")
    p.add_argument("--overlay", help="also write the photo with every mask coloured to this PNG")
    p.set_defaults(func=cmd_generate)
    return p


def _check_args(args, CliError):
    checks = [
        (args.points_per_side >= 1, f"--points-per-side must be at least 1, got {args.points_per_side}"),
        (args.points_per_batch >= 1, f"--points-per-batch must be at least 1, got {args.points_per_batch}"),
        (args.crop_layers >= 0, f"--crop-layers must be 0 or more, got {args.crop_layers}"),
        (args.min_mask_region_area >= 0, f"--min-mask-region-area must be 0 or more, got {args.min_mask_region_area}"),
    ]
    for ok, message in checks:
        if not ok:
            raise CliError(message)
    for flag in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
        value = getattr(args, flag)
        if not value == value or abs(value) == float("inf"):
            raise CliError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    for path, flag in ((args.output, "--output"), (args.overlay, "--overlay")):
        if path is not None:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise CliError(f"{flag} {path}: directory {directory} does not exist")


def _write_atomically(path, write):
    """Writes via a temporary file in the same directory, so a failure leaves no partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tf-sam-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cmd_generate(args):
    """Runs `tf-sam generate` for parsed `args` (see `register`)."""
    import numpy as np

    from tf_sam.cli import CliError, _load_image, _Progress

    _check_args(args, CliError)
    image = _load_image(args.image)
    width, height = image.size
    pixels = np.asarray(image)

    from tf_sam.automatic_mask_generator import SamAutomaticMaskGenerator
    from tf_sam.checkpoint import load_pretrained

    steps = _Progress(2 + (args.overlay is not None))
    start = time.perf_counter()
    model = steps.run("load_s", f"loading checkpoint {args.checkpoint}", load_pretrained, args.checkpoint)
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh, crop_n_layers=args.crop_layers,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="coco_rle" if args.rle == "coco" else "uncompressed_rle",
    )
    import keras

    print("generating masks", file=sys.stderr)
    generate_start = time.perf_counter()
    # Keras's bar writes to stdout; stdout is kept for the one-line result.
    with contextlib.redirect_stdout(sys.stderr):
        bar = keras.utils.Progbar(generator.num_batches((height, width)), unit_name="point batch")
        records = generator.generate(pixels, progress=lambda: bar.add(1))
    steps.timings["generate_s"] = round(time.perf_counter() - generate_start, 3)
    records.sort(key=lambda r: -r["area"])

    if args.overlay is not None:
        from tf_sam import amg

        def write_overlay(path):
            masks = [amg.coco_decode_rle(r["segmentation"]) for r in records]
            render_overlay(pixels, masks).save(path, format="PNG")

        steps.run("overlay_s", f"writing {args.overlay}", _write_atomically, args.overlay, write_overlay)
    steps.timings["total_s"] = round(time.perf_counter() - start, 3)
    result = {
        "image": os.path.abspath(args.image), "image_size": {"width": width, "height": height},
        "checkpoint": args.checkpoint,
        "settings": {
            "points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
            "crop_n_layers": args.crop_layers, "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh, "box_nms_thresh": args.box_nms_thresh,
            "min_mask_region_area": args.min_mask_region_area,
            "output_mode": "coco_rle" if args.rle == "coco" else "uncompressed_rle",
        },
        "masks": records, "timings": steps.timings,
    }

    def write_json(path):
        with open(path, "w") as f:
            json.dump(result, f)

    steps.run("write_s", f"writing {args.output}", _write_atomically, args.output, write_json)
    extra = f" and {args.overlay}" if args.overlay is not None else ""
    noun = "mask" if len(records) == 1 else "masks"
    print(f"wrote {len(records)} {noun} to {args.output}{extra} ({steps.timings['total_s']:.1f} s)")
