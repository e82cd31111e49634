"""`tf-sam finetune`: fine-tune a SAM checkpoint on a folder of masks or a COCO file.

Prints Keras's progress, the held-out mean IoU before and after, and writes a model that
`SamModel.from_pretrained` (and every other `tf-sam` command) loads.
"""

from __future__ import annotations

import json
import os
import sys
import time

__all__ = ["register", "cmd_finetune"]


def _cli_error(message):
    from tf_sam.cli import CliError

    return CliError(message)


def register(subparsers):
    """Adds the `finetune` subcommand to `tf-sam`'s argparse subparsers."""
    p = subparsers.add_parser("finetune", help="fine-tune a checkpoint on instance masks (folders or COCO)")
    src = p.add_argument_group("data (give --images and --masks, or --coco)")
    src.add_argument("--images", metavar="DIR", help="folder of training images")
    src.add_argument("--masks", metavar="DIR",
                     help="folder of instance-mask PNGs named like the images; one id per pixel value, 0 = background")
    src.add_argument("--coco", metavar="ANN.json", help="COCO instances file (polygons or RLE)")
    src.add_argument("--coco-images", metavar="DIR", help="folder of the COCO images (default: beside the JSON)")
    p.add_argument("--checkpoint", required=True, help="starting model: anything SamModel.from_pretrained takes")
    p.add_argument("--output", required=True, metavar="DIR", help="where the fine-tuned model is written")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning rate over the run: cosine decay to 0 (default) or constant")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="linear warm-up from 0 over the first N steps (SAM: 250); a newly initialised "
                        "decoder can collapse to one mask when its first steps take the peak rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--validation-split", type=float, default=0.2, help="fraction of images held out (default 0.2)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train the prompt encoder and decoder only; image embeddings are computed once")
    p.add_argument("--freeze-prompt-encoder", action="store_true")
    p.add_argument("--lora-rank", type=int, default=0, metavar="R",
                   help="LoRA of rank R on the image encoder's attention projections (the rest of it frozen)")
    p.add_argument("--prompts", choices=("points", "box", "points+box", "mixed"), default="mixed",
                   help="prompt type sampled from the masks (default mixed: clicks or a box)")
    p.add_argument("--num-prompts", type=int, default=4, help="objects per image per step")
    p.add_argument("--num-points", type=int, default=1, help="positive clicks per object")
    p.add_argument("--num-negatives", type=int, default=0, help="background clicks per object")
    p.add_argument("--single-mask", action="store_true", help="train the single-mask output instead of 3 masks")
    p.add_argument("--focal-weight", type=float, default=20.0, help="focal : dice weight (SAM: 20)")
    p.add_argument("--focal-alpha", type=float, default=0.25,
                   help="focal loss weight of the mask's pixels (SAM: 0.25); negative weighs both classes alike")
    p.add_argument("--focal-gamma", type=float, default=2.0,
                   help="focal loss exponent (SAM: 2); 0 with --focal-alpha -1 is plain binary cross-entropy")
    p.add_argument("--mixed-precision", action="store_true", help="compute in bfloat16 (mixed_bfloat16 policy)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable, empty or mismatched examples with a warning instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras progress: 0 silent, 1 bar, 2 line")
    p.set_defaults(func=cmd_finetune)
    return p


def _learning_rate(args, train):
    """`--learning-rate` over the run: `--warmup-steps` of ramp, then `--schedule`."""
    from tf_sam.training import warmup_schedule

    steps = args.epochs * max(int(train.cardinality()), 1)  # unknown or infinite (< 0): one step per epoch
    return warmup_schedule(args.learning_rate, steps, args.warmup_steps, decay=args.schedule)


def cmd_finetune(args):
    """Runs `tf-sam finetune`; raises `CliError` for expected failures."""
    if args.coco is None and (args.images is None or args.masks is None):
        raise _cli_error("give --images DIR and --masks DIR, or --coco ANN.json")
    if args.coco is not None and (args.images is not None or args.masks is not None):
        raise _cli_error("give either --coco or --images/--masks, not both")
    for name in ("epochs", "batch_size", "num_prompts"):
        if getattr(args, name) < 1:
            raise _cli_error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lora_rank < 0:
        raise _cli_error("--lora-rank must be 0 (off) or positive")
    if args.lora_rank and args.freeze_encoder:
        raise _cli_error("--lora-rank adapts the image encoder; it cannot be combined with --freeze-encoder")
    if not 0.0 <= args.validation_split < 1.0:
        raise _cli_error("--validation-split must be in [0, 1)")

    import keras
    import tensorflow as tf

    from tf_sam.checkpoint import load_pretrained
    from tf_sam.training import datasets, freezing
    from tf_sam.training.metrics import evaluate_mean_iou

    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        start = time.perf_counter()
        print(f"loading {args.checkpoint} ...", file=sys.stderr)
        model = load_pretrained(args.checkpoint)
        cache = args.freeze_encoder
        freezing.freeze(model, encoder=args.freeze_encoder, prompt_encoder=args.freeze_prompt_encoder)
        if args.lora_rank:
            adapted = freezing.enable_lora(model, args.lora_rank)
            print(f"LoRA rank {args.lora_rank} on {len(adapted)} attention projections", file=sys.stderr)
        prompt_options = dict(
            num_prompts=args.num_prompts, num_points=args.num_points, num_negatives=args.num_negatives,
            mode=args.prompts,
        )
        try:
            train, val, info = datasets.build_datasets(
                model.config, images_dir=args.images, masks_dir=args.masks, coco=args.coco,
                coco_images_dir=args.coco_images, batch_size=args.batch_size,
                validation_split=args.validation_split, seed=args.seed,
                on_error="skip" if args.skip_bad else "raise", prompt_options=prompt_options,
                embedding_model=model if cache else None,
            )
        except datasets.DatasetError as e:
            raise _cli_error(str(e)) from None
        n_train, n_val = len(info["train_examples"]), len(info["validation_examples"])
        held_out = val
        if held_out is None:
            print("no validation split: reporting mean IoU on the training images", file=sys.stderr)
            held_out = datasets.build_datasets(
                model.config, images_dir=args.images, masks_dir=args.masks, coco=args.coco,
                coco_images_dir=args.coco_images, batch_size=args.batch_size, seed=args.seed,
                on_error="skip" if args.skip_bad else "raise", prompt_options=prompt_options, shuffle=False,
                embedding_model=model if cache else None,
            )[0]
        multimask = not args.single_mask
        summary = freezing.trainable_summary(model)
        print(f"{n_train} training / {n_val} validation images; trainable parameters "
              f"{summary['total'][0]:,} of {summary['total'][1]:,}", file=sys.stderr)
        iou_before = evaluate_mean_iou(model, held_out, multimask_output=multimask)
        print(f"mean IoU before: {iou_before:.4f}")

        learning_rate = _learning_rate(args, train)
        loss = dict(focal_weight=args.focal_weight, focal_alpha=args.focal_alpha, focal_gamma=args.focal_gamma)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=args.weight_decay),
            multimask_output=multimask, jit_compile=False, **loss,
        )
        os.makedirs(args.output, exist_ok=True)
        callbacks = [
            keras.callbacks.ModelCheckpoint(
                os.path.join(args.output, "checkpoints", "epoch-{epoch:03d}.weights.h5"), save_weights_only=True,
            ),
            keras.callbacks.BackupAndRestore(os.path.join(args.output, "backup")),
        ]
        os.makedirs(os.path.join(args.output, "checkpoints"), exist_ok=True)
        history = model.fit(train, validation_data=val, epochs=args.epochs, callbacks=callbacks,
                            verbose=args.verbose)
        iou_after = evaluate_mean_iou(model, held_out, multimask_output=multimask)
        print(f"mean IoU after: {iou_after:.4f} ({iou_after - iou_before:+.4f})")
        if args.mixed_precision:
            # Weights are float32 under mixed precision already; the saved model is plain float32.
            keras.mixed_precision.set_global_policy("float32")
        model.save_pretrained(args.output)
        record = {
            "checkpoint": args.checkpoint, "train_images": n_train, "validation_images": n_val,
            "epochs": args.epochs, "mean_iou_before": iou_before, "mean_iou_after": iou_after,
            "loss": loss,  # as passed to compile: how this model was trained
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "seconds": round(time.perf_counter() - start, 1),
        }
        with open(os.path.join(args.output, "finetune.json"), "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.output} (config.json, model.weights.h5, finetune.json)")
    finally:
        if args.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")
    del tf
