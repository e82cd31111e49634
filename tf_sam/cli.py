"""The `tf-sam` command line: convert and inspect checkpoints (more subcommands join here).

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


def build_parser():
    parser = argparse.ArgumentParser(prog="tf-sam", description="Segment Anything in Keras 3 / TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an HF/Meta/Hub checkpoint to tf_sam's format")
    p.add_argument("src", help="HF directory, Meta .pth file, tf_sam directory, .keras file or Hub id")
    p.add_argument("dst", help="output directory (config.json + model.weights.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted model in DST")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts")
    p.add_argument("checkpoint", help="any checkpoint `convert` accepts, or a preset name such as sam-vit-base")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the config")
    p.set_defaults(func=cmd_info)
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
