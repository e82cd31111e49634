"""The `tf-sam` command line: segment photos, convert and inspect checkpoints.

Every subcommand turns expected failures (missing files, bad checkpoints, offline Hub)
into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# TensorFlow's C++ start-up chatter drowns a CLI's output; users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COMPONENTS = {
    "vision_encoder": "image encoder",
    "prompt_encoder": "prompt encoder",
    "mask_decoder": "mask decoder",
    "shared_image_embedding": "positional encoding",
}


class CliError(Exception):
    """An expected failure reported as one line."""


def _count_checkpoint(source):
    """Returns `(config, {component: parameter count})` without building the model."""
    import h5py
    import numpy as np

    from tf_sam.checkpoint import loading
    from tf_sam.config import SamConfig

    if source in _presets():
        config = SamConfig.from_preset(source)
        return config, _count_from_config(config)
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, loading.WEIGHTS_NAME)):
        config = SamConfig.from_pretrained(source)
        counts: dict[str, int] = {}
        keras_names = {
            "sam_vision_encoder": "vision_encoder", "sam_prompt_encoder": "prompt_encoder",
            "sam_mask_decoder": "mask_decoder", "sam_positional_embedding": "shared_image_embedding",
        }

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                part = keras_names.get(name.split("/")[1], name.split("/")[1])
                counts[part] = counts.get(part, 0) + int(np.prod(obj.shape))

        with h5py.File(os.path.join(source, loading.WEIGHTS_NAME), "r") as f:
            f.visititems(visit)
        return config, counts
    if os.path.isdir(source):
        config = SamConfig.from_pretrained(source)
        files = loading._directory_weight_files(source)
    elif os.path.isfile(source):
        config, files = None, [source]
    else:
        model = loading.load_pretrained(source)  # Hub id: downloads and caches
        return model.config, _count_model(model)
    entries, meta_config, _ = loading.read_checkpoint(files)
    config = meta_config or config
    if config is None:
        config = SamConfig.from_pretrained(os.path.dirname(os.path.abspath(source)))
    counts = {}
    for name, entry in entries.items():
        if name == "prompt_encoder.shared_embedding.positional_embedding":
            continue  # tied to shared_image_embedding
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + int(np.prod(entry.shape))
    return config, counts


def _count_model(model):
    counts: dict[str, int] = {}
    for part in COMPONENTS:
        layer = getattr(model, part)
        counts[part] = sum(int(w.numpy().size) for w in layer.weights)
    counts["prompt_encoder"] -= counts["shared_image_embedding"]  # counted once, in its own row
    return counts


def _count_from_config(config):
    from tf_sam.modeling.sam_model import SamModel

    return _count_model(SamModel(config))


def _presets():
    from tf_sam.config import PRESETS

    return PRESETS


def cmd_info(args):
    config, counts = _count_checkpoint(args.checkpoint)
    v = config.vision_config
    print(f"checkpoint: {args.checkpoint}")
    print(
        f"architecture: ViT hidden {v.hidden_size}, {v.num_hidden_layers} layers, {v.num_attention_heads} heads, "
        f"mlp {v.mlp_dim}, window {v.window_size}, global layers {list(v.global_attn_indexes)}, "
        f"input {v.image_size}x{v.image_size}, patch {v.patch_size}"
    )
    print("parameters:")
    for part, label in COMPONENTS.items():
        print(f"  {label:<20} {counts.get(part, 0):>13,}")
    print(f"  {'total':<20} {sum(counts.values()):>13,}")
    if args.json:
        print(json.dumps({"config": config.to_dict(), "parameters": counts, "total": sum(counts.values())}))
    else:
        print("config:")
        print(config.to_json_string(), end="")


def cmd_convert(args):
    from tf_sam.checkpoint import load_pretrained, save_pretrained

    if os.path.exists(os.path.join(args.dst, "model.weights.h5")) and not args.overwrite:
        raise CliError(f"{args.dst} already holds a converted model; pass --overwrite to replace it.")
    start = time.perf_counter()
    print(f"reading {args.src} ...", file=sys.stderr)
    model = load_pretrained(args.src)
    print(f"writing {args.dst} ...", file=sys.stderr)
    save_pretrained(model, args.dst)
    total = sum(int(w.numpy().size) for w in model.weights)
    size = os.path.getsize(os.path.join(args.dst, "model.weights.h5"))
    print(
        f"converted {args.src} -> {args.dst} ({total:,} parameters, {size / 2**20:.1f} MiB, "
        f"{time.perf_counter() - start:.1f} s)"
    )


DEFAULT_CHECKPOINT = "facebook/sam-vit-base"


def _parse_numbers(text, counts, what, example):
    parts = text.split(",")
    if len(parts) not in counts:
        raise CliError(f"malformed {what} {text!r}: expected {example}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise CliError(f"malformed {what} {text!r}: expected numbers like {example}") from None
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise CliError(f"malformed {what} {text!r}: numbers must be finite")
    return values


def _parse_point(text):
    values = _parse_numbers(text, (2, 3), "--point", "X,Y or X,Y,LABEL (e.g. 500,375,1)")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise CliError(f"malformed --point {text!r}: LABEL must be 1 (foreground) or 0 (background)")
    return values[:2], int(label)


def _load_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise CliError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CliError(f"cannot read image {path}: {e}") from None


class _Progress:
    """Reports slow steps on stderr with their durations, which result.json also records."""

    def __init__(self, steps):
        self.steps, self.index, self.timings = steps, 0, {}

    def run(self, key, label, fn, *args, **kwargs):
        self.index += 1
        print(f"[{self.index}/{self.steps}] {label} ...", file=sys.stderr, end="", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[key] = round(time.perf_counter() - start, 3)
        print(f" {self.timings[key]:.1f} s", file=sys.stderr, flush=True)
        return result


def _overlay(image, mask, points, labels, box):
    """The photo with `mask` tinted and the prompts drawn (green fg, red bg, blue box)."""
    import numpy as np
    from PIL import Image, ImageDraw

    pixels = np.asarray(image, dtype=np.float32)
    colour = np.array([30, 144, 255], np.float32)
    pixels[mask] = 0.45 * pixels[mask] + 0.55 * colour
    out = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    radius = max(4, round(max(out.size) / 150))
    for (x, y), label in zip(points, labels):
        fill = (0, 200, 0) if label == 1 else (220, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255), width=2)
    if box is not None:
        draw.rectangle(box, outline=(0, 90, 255), width=max(2, radius // 2))
    return out


def _mask_box(mask):
    import numpy as np

    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def cmd_segment(args):
    import shutil
    import tempfile

    import numpy as np
    from PIL import Image

    prompts = [_parse_point(p) for p in args.point or []]
    box = _parse_numbers(args.box, (4,), "--box", "X0,Y0,X1,Y1 (e.g. 425,600,700,875)") if args.box else None
    if not prompts and box is None:
        raise CliError("give at least one prompt: --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
        raise CliError(f"malformed --box {args.box!r}: need X0 < X1 and Y0 < Y1")
    image = _load_image(args.image)
    width, height = image.size
    for (x, y), _ in prompts:
        if not (0 <= x < width and 0 <= y < height):
            raise CliError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image {args.image}")
    if box is not None and not (0 <= box[0] and 0 <= box[1] and box[2] <= width and box[3] <= height):
        raise CliError(f"box {args.box} is outside the {width}x{height} image {args.image}")

    from tf_sam.checkpoint import load_pretrained
    from tf_sam.predictor import SamPredictor

    progress = _Progress(4)
    start = time.perf_counter()
    model = progress.run("load_s", f"loading checkpoint {args.checkpoint}", load_pretrained, args.checkpoint)
    predictor = SamPredictor(model)
    progress.run("encode_s", "encoding image", predictor.set_image, image)
    points = [p for p, _ in prompts]
    labels = [label for _, label in prompts]
    masks, scores, _ = progress.run(
        "decode_s", "decoding prompts", predictor.predict,
        point_coords=points or None, point_labels=labels or None, box=box, multimask_output=args.multimask,
    )
    order = np.argsort(-scores)
    names = ["mask.png"] if len(order) == 1 else [f"mask_{rank}.png" for rank in range(len(order))]

    def write(directory):
        records = []
        for name, index in zip(names, order):
            Image.fromarray(masks[index].astype(np.uint8) * 255).save(os.path.join(directory, name))
            records.append({
                "file": name, "score": round(float(scores[index]), 6), "area": int(masks[index].sum()),
                "box": _mask_box(masks[index]),
            })
        _overlay(image, masks[order[0]], points, labels, box).save(os.path.join(directory, "overlay.png"))
        return records

    # Everything goes to a staging folder first, so a failure leaves no partial output.
    os.makedirs(args.output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tf-sam-", dir=args.output_dir)
    try:
        records = progress.run("write_s", f"writing {args.output_dir}", write, staging)
        progress.timings["total_s"] = round(time.perf_counter() - start, 3)
        result = {
            "image": os.path.abspath(args.image), "image_size": {"width": width, "height": height},
            "checkpoint": args.checkpoint,
            "prompts": {"points": [{"x": x, "y": y, "label": lab} for (x, y), lab in zip(points, labels)],
                        "box": box},
            "multimask": bool(args.multimask), "masks": records, "timings": progress.timings,
        }
        with open(os.path.join(staging, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(args.output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    best = records[0]
    print(f"wrote {', '.join(r['file'] for r in records)}, overlay.png and result.json to {args.output_dir} "
          f"(best score {best['score']:.3f}, area {best['area']} px)")


def _describe_saved_model(path):
    """Lines describing each signature's inputs and outputs (name, dtype, shape)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    lines = []
    for name, fn in loaded.signatures.items():
        _, inputs = fn.structured_input_signature
        lines.append(f"  {name}")
        for key, spec in sorted(inputs.items()):
            lines.append(f"    in  {key:<18} {spec.dtype.name:<8} {spec.shape}")
        for key, spec in sorted(fn.structured_outputs.items()):
            lines.append(f"    out {key:<18} {spec.dtype.name:<8} {spec.shape}")
    return lines


def _tree_size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def cmd_export(args):
    from tf_sam.checkpoint import load_pretrained

    if args.format == "saved_model" and os.path.exists(args.out) and not args.overwrite:
        raise CliError(f"{args.out} already exists; pass --overwrite to replace it")
    model = _Progress(1).run("load_s", f"loading checkpoint {args.src}", load_pretrained, args.src)
    if args.format == "saved_model":
        from tf_sam.export import export_saved_model

        print(f"writing SavedModel {args.out} ...", file=sys.stderr)
        export_saved_model(model, args.out, overwrite=args.overwrite)
        print(f"SavedModel {args.out} ({_tree_size(args.out) / 2**20:.1f} MiB), signatures:")
        print("\n".join(_describe_saved_model(args.out)))
        base = os.path.dirname(os.path.abspath(args.out))
        print(
            "serve it with TF Serving (the directory name is the model version):\n"
            f"  docker run -p 8501:8501 -v {base}:/models/sam -e MODEL_NAME=sam tensorflow/serving\n"
            "  curl -X POST localhost:8501/v1/models/sam:predict -d @request.json   # see README"
        )
        return
    from tf_sam.export import FlexOpsError, export_tflite

    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{args.quantization}" if args.quantization else ""
    parts = ["encoder", "decoder"] if args.part == "both" else [args.part]
    try:
        for part in parts:
            path = os.path.join(args.out, f"sam_{part}{suffix}.tflite")
            print(f"converting the {part} ...", file=sys.stderr)
            size = export_tflite(
                model, path, part=part, quantization=args.quantization,
                tanh_gelu_approximation=args.tanh_gelu, return_single_mask=args.single_mask,
                overwrite=args.overwrite,
            )
            print(f"{path}: {size / 2**20:.2f} MiB")
    except FlexOpsError as e:
        raise CliError(str(e)) from None
    print("run with LiteRT: from ai_edge_litert.interpreter import Interpreter; "
          "Interpreter(model_path=...).get_signature_runner()(**inputs)")


def build_parser():
    parser = argparse.ArgumentParser(prog="tf-sam", description="Segment Anything in Keras 3 / TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment a photo from point and/or box prompts")
    p.add_argument("image", help="photo to segment (any format Pillow reads)")
    p.add_argument("--point", action="append", metavar="X,Y[,LABEL]",
                   help="a click in original pixels; LABEL 1 = object (default), 0 = background; repeatable")
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object, in original pixels")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"anything SamModel.from_pretrained takes (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--multimask", action="store_true", help="write SAM's three candidate masks, best first")
    p.add_argument("--output-dir", default="sam_output", help="where to write masks, overlay and result.json")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("convert", help="convert an HF/Meta/Hub checkpoint to tf_sam's format")
    p.add_argument("src", help="HF directory, Meta .pth file, tf_sam directory, .keras file or Hub id")
    p.add_argument("dst", help="output directory (config.json + model.weights.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted model in DST")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a checkpoint as a SavedModel (TF Serving) or TFLite files")
    p.add_argument("src", help="any checkpoint `convert` accepts")
    p.add_argument("out", help="SavedModel: MODEL_DIR/VERSION, e.g. sam/1; TFLite: a directory for the files")
    p.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model")
    p.add_argument("--part", choices=["both", "encoder", "decoder"], default="both", help="TFLite: which half")
    p.add_argument("--quantization", choices=["float16", "dynamic_int8"], help="TFLite: weight quantization")
    p.add_argument("--tanh-gelu", action="store_true", help="TFLite: tanh GELU for runtimes without erf")
    p.add_argument("--single-mask", action="store_true", help="TFLite decoder: return one mask (Meta's rule)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts")
    p.add_argument("checkpoint", help="any checkpoint `convert` accepts, or a preset name such as sam-vit-base")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the config")
    p.set_defaults(func=cmd_info)

    from tf_sam import cli_finetune, cli_generate

    cli_generate.register(sub)
    cli_finetune.register(sub)
    return parser


def main(argv=None):
    """Entry point of the `tf-sam` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    from tf_sam.checkpoint import CheckpointError

    try:
        args.func(args)
    except (CliError, CheckpointError, FileNotFoundError, OSError, ValueError) as e:
        message = str(e).strip() or type(e).__name__
        print(f"tf-sam {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
