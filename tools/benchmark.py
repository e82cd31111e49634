#!/usr/bin/env python
"""CPU benchmark of tf_sam against Hugging Face's PyTorch `transformers.SamModel`.

Both sides get the same random weights: HF's `SamModel` is built from the config, every
parameter is perturbed (so no zero-initialised tensor hides anything), it is saved with
`save_pretrained` to a temporary directory, and `tf_sam.SamModel.from_pretrained` loads it.
Each measurement then runs both sides in alternation (warm-up first, then A B A B ...)
with the same thread count, and the medians are reported, with the spread of the
per-round ratios (each round's sample of ours over the reference's beside it).

Usage (from the repository root):

    python tools/benchmark.py                      # ViT-B, all sections (see BENCHMARKS.md for times)
    python tools/benchmark.py --tiny               # small config, smoke run without export/amg
    python tools/benchmark.py --tiny --only export,amg # smoke-test the deployment paths
    python tools/benchmark.py --config sam-vit-large
    python tools/benchmark.py --config path/to/config.json --threads 4 --repeats 7
    python tools/benchmark.py --only machine,encoder   # a subset of the sections
    python tools/benchmark.py --device gpu             # both sides on the first CUDA GPU

Progress goes to stderr; the table goes to stdout and ends with one machine-readable line
`BENCHMARK_JSON {...}`. A typical run keeps the table and drops the progress:

    python tools/benchmark.py 2>bench.err | tee bench.txt

Sections (`--only`, comma-separated; default all, with --tiny all but export and amg):
    machine  numpy / TF 4096x4096 fp32 matmul GFLOP/s and the encoder's analytic FLOPs
    encoder  1 image: ours eager, tf.function, tf.function(jit_compile=True) vs HF eager;
             ours also under Keras mixed precision (bfloat16 on CPU, float16 on GPU)
    decoder  one point, and 64 single-point prompts in one call, from cached embeddings;
             the same four variants of ours
    e2e      photo -> mask: processor + encoder + 1 point + post_process_masks
    memory   peak RSS (VmHWM) of encoder + 64-prompt decode, each side in its own process
    export   SavedModel and TFLite fp32 / float16 / dynamic_int8 encoder and decoder
             rows, when `tf_sam.export` has `export_saved_model` / `convert_to_tflite`
    amg      automatic mask generation at 32 points per side, when
             `tf_sam.SamAutomaticMaskGenerator` exists

Environment variables such as `TF_ENABLE_ONEDNN_OPTS` must be set by the caller, because
TensorFlow reads them at import; the script reports what it saw.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Running `python tools/benchmark.py` puts tools/ on sys.path, not the repository; the
# checkout's tf_sam must win over any installed copy.
sys.path.insert(0, REPO_ROOT)
PHOTO = os.path.join(REPO_ROOT, "..", "shared", "images", "sam_truck.jpg")
SECTIONS = ("machine", "encoder", "decoder", "e2e", "memory", "export", "amg")
# The photo pipeline, memory children, exports and mask generation measure CPU deployment.
GPU_SECTIONS = ("machine", "encoder", "decoder")
# Writing a SavedModel and converting TFLite take tens of seconds even for a toy model, so
# the smoke run leaves them out unless asked for (`--tiny --only export`).
TINY_SECTIONS = ("machine", "encoder", "decoder", "e2e", "memory")

# Ratio ceilings (ours / reference) from the issue; lower is better.
TARGETS = {
    "encoder_keras": 1.0,
    "best_deployable": 0.6,
    "single_prompt": 0.5,
    "prompts_64": 0.3,
    "peak_memory": 1.0,
    # On a GPU: at least 3x the reference's fp32 throughput, i.e. a third of its time.
    "gpu_throughput": 1 / 3,
}


# --------------------------------------------------------------------------- utilities

def log(message):
    """Progress line on stderr, so stdout holds only the table and the JSON line."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def short_error(error, limit=160):
    """One-line summary of an exception for a table cell.

    TF wraps graph errors as "in user code: <traceback> ... ValueError: <cause>"; the last
    line carries the cause, so that is the line kept.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(error).__name__}: {text}"[:limit]


def parse_args(argv=None):
    """Command-line options; the `--_child*` ones are internal to the memory section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="sam-vit-base",
                        help="a tf_sam preset name or a path to an HF/tf_sam config.json (default sam-vit-base)")
    parser.add_argument("--tiny", action="store_true", help="small config for a seconds-long smoke run")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both sides (default 2)")
    parser.add_argument("--inter-op-threads", type=int, default=None,
                        help="TF inter-op threads (default: same as --threads)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 11; 3 with --tiny)")
    parser.add_argument("--encoder-repeats", type=int, default=None,
                        help="timed repeats for encoder-sized work: encoder, e2e, export, amg (default 3; 2 with --tiny)")
    parser.add_argument("--min-sample-s", type=float, default=None,
                        help="fast calls are looped until one sample lasts this long (default 0.25 s; 0.05 with --tiny)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)}; "
                             f"with --tiny: {','.join(TINY_SECTIONS)})")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: both models on the first CUDA GPU, sections "
                             f"{','.join(GPU_SECTIONS)} (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_child", choices=("ours", "ref", "amg"), help=argparse.SUPPRESS)
    parser.add_argument("--_points-per-side", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--_keep-all", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    allowed = GPU_SECTIONS if args.device == "gpu" else SECTIONS
    if args.only is None:
        args.only = ",".join(GPU_SECTIONS if args.device == "gpu" else TINY_SECTIONS if args.tiny else SECTIONS)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(allowed))
    if unknown:
        parser.error(f"section(s) {unknown} not available with --device {args.device}; choose from {', '.join(allowed)}")
    # --tiny is a smoke run: fewer, shorter samples keep it well under a minute.
    if args.repeats is None:
        # This class of VM has stretches of seconds where one side runs ~1.6x slower;
        # 11 alternating samples keep the medians from resting on one stretch.
        args.repeats = 3 if args.tiny else 11
    if args.encoder_repeats is None:
        args.encoder_repeats = 2 if args.tiny else 3
    if args.min_sample_s is None:
        args.min_sample_s = 0.05 if args.tiny else 0.25
    if args.inter_op_threads is None:
        args.inter_op_threads = args.threads
    return args


def limit_blas_threads(threads):
    """Caps OpenMP/BLAS pools before numpy or torch load, so numpy's matmul figure and any
    OpenMP-based kernels use the same number of cores as the two models."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow(threads, inter_op_threads, device="cpu"):
    """Imports TensorFlow and fixes its thread pools; this must precede every TF op, since
    the pools are created by the first op and cannot be resized afterwards."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    if device == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise SystemExit("--device gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty).")
        for gpu in gpus:
            # torch shares the card: take memory as it is needed, not all of it up front.
            tf.config.experimental.set_memory_growth(gpu, True)
    return tf


def device_sync(device, tf, torch):
    """Returns a wrapper for timed callables: on a GPU the wrapped call returns only when
    both frameworks' queued kernels have finished; on CPU it is the callable itself."""
    if device != "gpu":
        return lambda fn: fn

    def wrap(fn):
        def run():
            out = fn()
            tf.test.experimental.sync_devices()
            torch.cuda.synchronize()
            return out

        return run

    return wrap


def mixed_policy(device):
    """Keras mixed-precision policy for the device: float16 for GPU tensor cores, bfloat16
    on CPUs (oneDNN runs it on AVX-512-BF16 / AMX units)."""
    return "mixed_float16" if device == "gpu" else "mixed_bfloat16"


def load_mixed(tf_sam, weights_dir, policy):
    """Our model from the same weights, built under a Keras mixed-precision policy
    (float32 variables, `policy`'s compute dtype)."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        return tf_sam.SamModel.from_pretrained(weights_dir)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def import_torch(threads):
    """Imports torch with `threads` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    return torch


def proc_status_kib(key):
    """A `/proc/self/status` field in KiB (VmHWM is this process's own peak RSS; unlike
    ru_maxrss it does not inherit the parent's peak across fork+exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def cpu_model():
    """CPU model name from /proc/cpuinfo, plus the SIMD extensions that matter for GEMM."""
    name, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return name, simd


def cpu_idle_policy():
    """The guest's cpuidle driver and halt-poll window, e.g. "haltpoll, guest_halt_poll_ns 0".

    Reported because on a VM an idle vCPU that halts must wait for the host to run it again,
    a suspect for the machine-wide slow stretches that move the small-op decode rows
    (measured in tools/BENCHMARKS.md; polling did not remove them). None when Linux does
    not say.
    """
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    driver = read("/sys/devices/system/cpu/cpuidle/current_driver")
    if driver is None:
        return None
    poll_ns = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return driver if poll_ns is None else f"{driver}, guest_halt_poll_ns {poll_ns}"


def environment(args):
    """Versions, CPU and threading settings, as a dict."""
    import keras
    import tensorflow as tf
    import torch
    import transformers

    name, simd = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": name,
        "simd": simd,
        "cpu_idle": cpu_idle_policy(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": args.threads,
        "tf_inter_op_threads": args.inter_op_threads,
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "gpu" else None,
        # Other jobs on the same cores skew both sides; the load average makes that visible.
        "loadavg_1min_at_start": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------- configuration

def tiny_config_dict():
    """A small HF-format SamConfig dict: every code path of ViT-B, at toy size (128 px)."""
    return dict(
        vision_config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=16,
            window_size=3, global_attn_indexes=[1], output_channels=32, mlp_dim=128, num_pos_feats=16,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


def resolve_config(args):
    """`(label, HF-format config dict)` from --tiny, a preset name or a config.json path."""
    import tf_sam

    if args.tiny:
        return "tiny", tiny_config_dict()
    if os.path.exists(args.config):
        return args.config, tf_sam.SamConfig.from_pretrained(args.config).to_dict()
    return args.config, tf_sam.SamConfig.from_preset(args.config).to_dict()


def encoder_flops(vision):
    """Analytic FLOPs (2 per multiply-add) of one image through the ViT encoder.

    Follows the model's actual computation: in windowed blocks the grid is zero-padded
    to a multiple of the window (64 -> 70 for window 14) before qkv/attention/proj, while
    the MLP runs after unpadding. Softmax, LayerNorm, GELU and adds are not counted.
    Returns `(total, breakdown dict)`.
    """
    hidden = vision["hidden_size"]
    heads = vision["num_attention_heads"]
    head_dim = hidden // heads
    patch = vision.get("patch_size", 16)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    image = vision.get("image_size", 1024)
    image = image[0] if isinstance(image, (list, tuple)) else image
    channels = vision.get("num_channels", 3)
    out_ch = vision.get("output_channels", 256)
    mlp_dim = vision.get("mlp_dim") or int(hidden * vision.get("mlp_ratio", 4.0))
    window = vision.get("window_size", 14)
    global_idx = set(vision.get("global_attn_indexes", (2, 5, 8, 11)))
    use_rel_pos = vision.get("use_rel_pos", True)
    grid = image // patch
    tokens = grid * grid

    macs = dict(patch_embed=tokens * hidden * patch * patch * channels, qkv=0, proj=0, mlp=0,
                attention=0, rel_pos=0)
    for i in range(vision["num_hidden_layers"]):
        if i in global_idx or window == 0:
            side, windows = grid, 1
        else:
            padded = math.ceil(grid / window) * window
            side, windows = window, (padded // window) ** 2
        n = side * side  # tokens per attention group
        attended = windows * n  # padded tokens seen by qkv/proj
        macs["qkv"] += attended * hidden * 3 * hidden
        macs["proj"] += attended * hidden * hidden
        macs["mlp"] += 2 * tokens * hidden * mlp_dim
        macs["attention"] += 2 * windows * heads * n * n * head_dim  # QK^T and AV
        if use_rel_pos:
            macs["rel_pos"] += 2 * windows * heads * n * side * head_dim  # rel_h and rel_w einsums
    macs["neck"] = tokens * hidden * out_ch + tokens * out_ch * out_ch * 9
    breakdown = {k: 2 * v for k, v in macs.items()}
    return sum(breakdown.values()), breakdown


# ------------------------------------------------------------------------------ models

def build_reference(config_dict, seed):
    """HF PyTorch SamModel with every parameter perturbed: the test suite's reference.

    Same builder as the parity tests (`tests.conftest.perturbed_hf_model`), so the
    benchmark measures exactly the weights the tests check.
    """
    from tests.conftest import perturbed_hf_model

    return perturbed_hf_model(config_dict, seed)


def max_rel_err(ours, ref):
    """The parity metric of the tests (`tests.conftest.max_rel_err`)."""
    from tests.conftest import max_rel_err as metric

    return metric(ours, ref)


# ---------------------------------------------------------------------------- timing

def _time_call(fn, inner):
    """Seconds per call of `fn`, averaged over `inner` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def run_alternating(candidates, repeats, min_sample_s, label):
    """Times several callables in round-robin (A B C A B C ...) and returns medians.

    Round-robin rather than all-A-then-all-B so thermal or background drift hits every
    candidate alike. Each candidate is warmed up once (tracing, XLA compilation, oneDNN
    primitive caches); calls faster than `min_sample_s` are looped so that one sample
    spans at least that long and timer resolution does not dominate.

    Args:
        candidates: list of `(name, fn)`; a failing candidate is reported, not fatal.
        repeats: timed samples per candidate.
    Returns:
        `{name: {"median_s", "samples_s", "inner", "warmup_s"}}` or `{"error": str}`.
    """
    results, live = {}, []
    for name, fn in candidates:
        log(f"{label}: warm-up {name}")
        try:
            warm = _time_call(fn, 1)
            inner = 1
            if warm < min_sample_s:
                # The first call can include tracing; calibrate on a second, steady call.
                steady = _time_call(fn, 1)
                inner = max(1, min(1000, math.ceil(min_sample_s / max(steady, 1e-6))))
            results[name] = {"warmup_s": warm, "inner": inner, "samples_s": []}
            live.append((name, fn))
        except Exception as e:  # noqa: BLE001 - one broken variant must not end the run
            results[name] = {"error": short_error(e)}
            log(traceback.format_exc())  # the full story for stderr; the table gets one line
            log(f"{label}: {name} failed: {results[name]['error']}")
    for r in range(repeats):
        for name, fn in live:
            results[name]["samples_s"].append(_time_call(fn, results[name]["inner"]))
            # Let the other framework's spinning worker threads go idle before the next side.
            time.sleep(0.02)
        log(f"{label}: repeat {r + 1}/{repeats} " + ", ".join(
            f"{n}={results[n]['samples_s'][-1] * 1e3:.1f}ms" for n, _ in live))
    for name, _ in live:
        results[name]["median_s"] = statistics.median(results[name]["samples_s"])
    return results


def measure_matmul_gflops(n, tries):
    """Best-of-`tries` fp32 n x n matmul GFLOP/s for numpy and TensorFlow."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    np_best = min(_time_call(lambda: a @ b, 1) for _ in range(tries))
    ta, tb = tf.constant(a), tf.constant(b)
    tf.linalg.matmul(ta, tb)  # first call creates the kernel; keep it out of the timing
    tf_best = min(_time_call(lambda: tf.linalg.matmul(ta, tb).numpy(), 1) for _ in range(tries))
    return {"n": n, "numpy_gflops": flops / np_best / 1e9, "tf_gflops": flops / tf_best / 1e9}


# ------------------------------------------------------------------- memory (children)

def child_main(args):
    """Child process of the memory section: one side's encoder + 64-prompt decode.

    Imports only that side's framework so the other's libraries do not count, and prints
    one JSON line with its own VmHWM (peak RSS).
    """
    import numpy as np

    if args._child == "amg":
        return amg_child_main(args)
    with open(os.path.join(args._weights, "config.json")) as f:
        config = json.load(f)
    size = config["vision_config"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    rng = np.random.default_rng(args.seed)
    pixels = rng.standard_normal((1, size, size, 3)).astype(np.float32)
    points = (rng.random((1, 64, 1, 2)) * size).astype(np.float32)
    labels = np.ones((1, 64, 1), np.int64)
    after_import = None
    start = time.perf_counter()
    if args._child == "ours":
        import_tensorflow(args.threads, args.inter_op_threads)
        import tf_sam

        after_import = proc_status_kib("VmRSS")
        model = tf_sam.SamModel.from_pretrained(args._weights)
        loaded = proc_status_kib("VmRSS")
        import tensorflow as tf

        # Compiled, as SamPredictor and the exports run it: eager Keras calls keep
        # intermediates alive longer (measured eager: 5.3 GB peak for this same work).
        encode = tf.function(model.get_image_embeddings)
        decode = tf.function(lambda emb, pts, lbl: model(
            image_embeddings=emb, input_points=pts, input_labels=lbl, multimask_output=True).pred_masks)
        emb = encode(tf.constant(pixels))
        shape = tuple(decode(emb, tf.constant(points), tf.constant(labels.astype(np.int32))).shape)
    else:
        torch = import_torch(args.threads)
        import transformers

        after_import = proc_status_kib("VmRSS")
        model = transformers.SamModel.from_pretrained(args._weights).eval()
        loaded = proc_status_kib("VmRSS")
        with torch.inference_mode():
            emb = model.get_image_embeddings(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
            out = model(image_embeddings=emb, input_points=torch.from_numpy(points),
                        input_labels=torch.from_numpy(labels), multimask_output=True)
        shape = tuple(out.pred_masks.shape)
    print("CHILD_JSON " + json.dumps({
        "side": args._child, "vmhwm_kib": proc_status_kib("VmHWM"), "vmrss_kib": proc_status_kib("VmRSS"),
        "rss_after_import_kib": after_import, "rss_after_load_kib": loaded,
        "seconds": time.perf_counter() - start, "pred_masks_shape": shape,
    }), flush=True)


def amg_child_main(args):
    """Child of the amg section: our generator at `--_points-per-side` on the photo; VmHWM.

    Issue 6 asks that peak memory at 64 points per side stay within 1.5x that at 16: the
    decoder sees `points_per_batch` prompts at a time whatever the grid.
    """
    import_tensorflow(args.threads, args.inter_op_threads)
    import tf_sam

    model = tf_sam.SamModel.from_pretrained(args._weights)
    photo, _ = load_photo(args.tiny)
    loaded = proc_status_kib("VmHWM")
    start = time.perf_counter()
    # Random weights leave no mask above Meta's default thresholds, so nothing would be
    # upscaled; `--_keep-all` (thresholds 0) measures the worst case where every mask is.
    thresholds = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0) if args._keep_all else {}
    generator = tf_sam.SamAutomaticMaskGenerator(model, points_per_side=args._points_per_side, **thresholds)
    records = generator.generate(photo)
    print("CHILD_JSON " + json.dumps({
        "side": "amg", "points_per_side": args._points_per_side, "keep_all": args._keep_all,
        "vmhwm_kib": proc_status_kib("VmHWM"),
        "vmhwm_after_load_kib": loaded, "seconds": time.perf_counter() - start, "records": len(records),
    }), flush=True)


def start_memory_child(side, weights_dir, args, points_per_side=None, keep_all=False):
    """Starts `child_main` for one side in a fresh interpreter; returns the Popen."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", side, "--_weights", weights_dir,
           "--threads", str(args.threads), "--inter-op-threads", str(args.inter_op_threads),
           "--seed", str(args.seed)]
    if points_per_side is not None:
        cmd += ["--_points-per-side", str(points_per_side)]
    if keep_all:
        cmd.append("--_keep-all")
    if args.tiny:
        cmd.append("--tiny")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)


def finish_memory_child(proc):
    """Waits for a child from `start_memory_child` and returns its JSON dict (or an error)."""
    stdout, stderr = proc.communicate()
    for line in stdout.splitlines():
        if line.startswith("CHILD_JSON "):
            return json.loads(line[len("CHILD_JSON "):])
    tail = (stderr or stdout).strip().splitlines()[-3:]
    return {"error": f"child exited {proc.returncode}: {' | '.join(tail)[:300]}"}


# ------------------------------------------------------------------- optional features

def detect_processor():
    """Our `SamProcessor` class if it offers what e2e needs, else `(None, reason)`."""
    try:
        from tf_sam.processing import SamProcessor
    except Exception as e:  # noqa: BLE001
        return None, f"n/a (tf_sam.processing not importable: {type(e).__name__})"
    if not callable(getattr(SamProcessor, "__call__", None)) or not hasattr(SamProcessor, "post_process_masks"):
        return None, "n/a (SamProcessor lacks __call__/post_process_masks)"
    return SamProcessor, None


def detect_export():
    """`tf_sam.export` if it exists, else `(None, "n/a (not implemented yet)")`."""
    try:
        import tf_sam.export as export
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("tf_sam"):
            return None, "n/a (not implemented yet)"
        return None, f"n/a (tf_sam.export needs missing module {e.name})"
    except Exception as e:  # noqa: BLE001
        return None, f"n/a (tf_sam.export failed to import: {short_error(e)})"
    return export, None


def detect_amg():
    """`tf_sam.SamAutomaticMaskGenerator` if it exists, else `(None, reason)`."""
    import tf_sam

    generator = getattr(tf_sam, "SamAutomaticMaskGenerator", None)
    if generator is None:
        return None, "n/a (not implemented yet)"
    return generator, None


def load_photo(tiny=False):
    """The truck photo as uint8 HxWx3, or a synthetic 1800x1200 image if it is absent.

    With `tiny`, a tenth of the size: mask post-processing cost scales with the photo,
    and the smoke run only checks that the path works.
    """
    import numpy as np
    from PIL import Image

    if os.path.exists(PHOTO):
        image = Image.open(PHOTO).convert("RGB")
        name = os.path.relpath(PHOTO, REPO_ROOT)
        if tiny:
            image, name = image.resize((image.width // 10, image.height // 10), Image.BILINEAR), name + " at 1/10"
        return np.asarray(image), name
    rng = np.random.default_rng(0)
    # Smooth gradients plus noise: a plausible photo size, not a real scene.
    y, x = np.mgrid[0:1200, 0:1800]
    base = np.stack([x / 1800 * 255, y / 1200 * 255, (x + y) % 256], -1)
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    if tiny:
        return np.ascontiguousarray(image[::10, ::10]), "synthetic 180x120"
    return image, "synthetic 1800x1200"


def hf_image_processor(vision):
    """HF's SamImageProcessor sized for the config (1024/256 for SAM, smaller for --tiny)."""
    import transformers

    size = vision["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = vision["patch_size"]
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    low = 4 * (size // patch)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.SamImageProcessor(
            size={"longest_edge": size}, pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low},
        )


def tflite_interpreter_class():
    """LiteRT's interpreter (`ai_edge_litert`), else the deprecated `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return tf.lite.Interpreter, "tf.lite"


TFLITE_FORMATS = (("fp32", None), ("float16", "float16"), ("dynamic_int8", "dynamic_int8"))


def prepare_exports(export, model, workdir, args):
    """Writes and loads every deployable artefact `tf_sam.export` offers (untimed work).

    Returns `{"saved_model": loaded module or reason str, ("tflite", fmt, part): signature
    runner or reason str, "tflite_bytes": {...}, "interpreter": name}`. With --tiny only
    the fp32 TFLite pair is converted; the quantised ones take the same code path.
    """
    import tensorflow as tf

    artefacts = {"tflite_bytes": {}}
    if export is not None and hasattr(export, "export_saved_model"):
        try:
            log("export: writing and reloading the SavedModel")
            path = export.export_saved_model(model, os.path.join(workdir, "saved_model", "1"))
            artefacts["saved_model"] = tf.saved_model.load(path)
        except Exception as e:  # noqa: BLE001 - a broken export is a result, not a crash
            log(traceback.format_exc())
            artefacts["saved_model"] = f"failed: {short_error(e)}"
    else:
        artefacts["saved_model"] = "n/a (not implemented yet)"
    convert = getattr(export, "convert_to_tflite", None) if export is not None else None
    interpreter_cls, artefacts["interpreter"] = tflite_interpreter_class() if convert else (None, None)
    for fmt, quantization in TFLITE_FORMATS:
        for part in ("encoder", "decoder"):
            key = ("tflite", fmt, part)
            if convert is None:
                artefacts[key] = "n/a (not implemented yet)"
                continue
            if args.tiny and fmt != "fp32":
                artefacts[key] = "skipped with --tiny"
                continue
            try:
                log(f"export: converting the {part} to TFLite {fmt}")
                data = convert(model, part=part, quantization=quantization)
                interpreter = interpreter_cls(model_content=data, num_threads=args.threads)
                artefacts[key] = interpreter.get_signature_runner()
                artefacts["tflite_bytes"][f"{fmt}_{part}"] = len(data)
            except Exception as e:  # noqa: BLE001
                log(traceback.format_exc())
                artefacts[key] = f"failed: {short_error(e)}"
    return artefacts


def measure_exports(artefacts, model, hf, vision, args, report, flops):
    """Times the artefacts from `prepare_exports` against the matching reference work.

    Returns the quantised TFLite pipelines' mask IoU against fp32 (`tflite_mask_iou`).

    The SavedModel signatures take a uint8 photo and return binarised masks at the photo's
    size, so their reference is HF's image processor + encoder, and decoder +
    `post_process_masks`. The TFLite encoder takes processed pixels (reference: HF
    `get_image_embeddings`); the TFLite decoder returns mask logits at the photo size for
    one prompt per invoke (reference: decoder + `post_process_masks(binarize=False)`; 64
    prompts are 64 invokes against one batched HF call). Prompt coordinates are rescaled
    for HF outside the timing (a few float ops; the exports do it inside).
    """
    import numpy as np
    import tensorflow as tf
    import torch
    import transformers

    photo, photo_name = load_photo(args.tiny)
    h, w = photo.shape[:2]
    hf_proc = transformers.SamProcessor(image_processor=hf_image_processor(vision))
    hf_pixels = hf_proc.image_processor(photo, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        emb_ref = hf.get_image_embeddings(hf_pixels)
    pixels_np = np.ascontiguousarray(hf_pixels.numpy().transpose(0, 2, 3, 1))
    emb_np = model.get_image_embeddings(pixels_np).numpy()
    side = 4 * (vision["image_size"] // vision["patch_size"])
    rng = np.random.default_rng(args.seed + 7)
    prompts = {count: (rng.random((count, 1, 2)) * [w, h]).astype(np.float32) for count in (1, 64)}
    hf_inputs = {count: hf_proc(images=photo, input_points=[coords.tolist()], input_labels=[[[1]] * count],
                                return_tensors="pt") for count, coords in prompts.items()}

    def ref_embed_photo():
        pixels = hf_proc.image_processor(photo, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return hf.get_image_embeddings(pixels)

    def ref_encoder():
        with torch.inference_mode():
            return hf.get_image_embeddings(hf_pixels)

    def ref_decode(count, binarize):
        inputs = hf_inputs[count]
        with torch.inference_mode():
            out = hf(image_embeddings=emb_ref, input_points=inputs["input_points"],
                     input_labels=inputs["input_labels"], multimask_output=True)
        return hf_proc.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=binarize)

    # ---- SavedModel
    loaded = artefacts["saved_model"]
    if isinstance(loaded, str):
        report.add("export_saved_model", "SavedModel fp32 encoder / decoder", loaded, None)
    else:
        embed, decode = loaded.signatures["embed_image"], loaded.signatures["decode"]
        image_tf = tf.constant(photo)
        res = run_alternating([("ours SavedModel", lambda: embed(image=image_tf)), ("reference", ref_embed_photo)],
                              args.encoder_repeats, args.min_sample_s, "SavedModel embed_image")
        report.add("export_encoder_saved_model",
                   f"SavedModel fp32 embed_image: photo -> embeddings, incl. preprocessing ({photo_name})",
                   res["ours SavedModel"], res["reference"], gflop=flops / 1e9)
        embedded = embed(image=image_tf)
        for key, count, repeats in (("single_prompt", 1, args.repeats), ("prompts_64", 64, args.encoder_repeats)):
            inputs = dict(point_coords=tf.constant(prompts[count]), point_labels=tf.ones((count, 1), tf.int32),
                          mask_input=tf.zeros((count, side, side)), has_mask_input=tf.zeros((count,)),
                          image_embeddings=embedded["image_embeddings"], original_size=embedded["original_size"])
            res = run_alternating([("ours SavedModel", lambda inputs=inputs: decode(**inputs)),
                                   ("reference", lambda count=count: ref_decode(count, True))],
                                  repeats, args.min_sample_s, f"SavedModel decode x{count}")
            what = "1 point" if count == 1 else "64 prompts x 1 point"
            report.add(f"export_{key}_saved_model", f"SavedModel fp32 decode {what} -> binary masks at photo size",
                       res["ours SavedModel"], res["reference"])

    # ---- TFLite encoders, all formats and the reference in one round-robin
    encoders = [(fmt, artefacts[("tflite", fmt, "encoder")]) for fmt, _ in TFLITE_FORMATS]
    live = [(f"ours TFLite {fmt}", (lambda r=r: r(pixel_values=pixels_np))) for fmt, r in encoders
            if not isinstance(r, str)]
    res = run_alternating(live + [("reference", ref_encoder)], args.encoder_repeats, args.min_sample_s,
                          "TFLite encoder") if live else {}
    for fmt, runner in encoders:
        ours = runner if isinstance(runner, str) else res[f"ours TFLite {fmt}"]
        report.add(f"export_encoder_tflite_{fmt}", f"TFLite {fmt} encoder: pixels -> embeddings", ours,
                   res.get("reference"), gflop=flops / 1e9)

    # ---- TFLite decoders: one prompt per invoke
    decoders = [(fmt, artefacts[("tflite", fmt, "decoder")]) for fmt, _ in TFLITE_FORMATS]

    def tflite_decode(runner, count):
        for i in range(count):
            runner(image_embeddings=emb_np, point_coords=prompts[count][i:i + 1],
                   point_labels=np.ones((1, 1), np.float32), mask_input=np.zeros((1, side, side), np.float32),
                   has_mask_input=np.zeros((1,), np.float32), orig_im_size=np.array([h, w], np.int32))

    for key, count, repeats in (("single_prompt", 1, args.repeats), ("prompts_64", 64, args.encoder_repeats)):
        live = [(f"ours TFLite {fmt}", (lambda r=r, count=count: tflite_decode(r, count))) for fmt, r in decoders
                if not isinstance(r, str)]
        res = run_alternating(live + [("reference", lambda count=count: ref_decode(count, False))], repeats,
                              args.min_sample_s, f"TFLite decode x{count}") if live else {}
        what = "1 point" if count == 1 else "64 prompts = 64 invokes (ref: one batched call)"
        for fmt, runner in decoders:
            ours = runner if isinstance(runner, str) else res[f"ours TFLite {fmt}"]
            report.add(f"export_{key}_tflite_{fmt}", f"TFLite {fmt} decode {what} -> mask logits at photo size",
                       ours, res.get("reference"))

    return tflite_mask_iou(artefacts, pixels_np, prompts[64][:16], side, (h, w))


def tflite_mask_iou(artefacts, pixels, coords, side, size):
    """Mask IoU of each quantised TFLite pipeline against the fp32 one (issue 4's quality check).

    Each format runs its own encoder and decoder on the photo for the given single-point
    prompts; the binary masks at photo size (logits > 0, all 3 candidates) are compared
    with fp32's. Returns `{fmt: {"mean_iou", "min_iou", "masks"}}` or a reason string.
    """
    import numpy as np

    def pipeline(fmt):
        encoder, decoder = artefacts[("tflite", fmt, "encoder")], artefacts[("tflite", fmt, "decoder")]
        if isinstance(encoder, str) or isinstance(decoder, str):
            return None
        embeddings = encoder(pixel_values=pixels)["image_embeddings"]
        masks = []
        for point in coords:
            out = decoder(image_embeddings=embeddings, point_coords=point[None], point_labels=np.ones((1, 1), np.float32),
                          mask_input=np.zeros((1, side, side), np.float32), has_mask_input=np.zeros((1,), np.float32),
                          orig_im_size=np.array(size, np.int32))
            masks.append(out["masks"][0] > 0)
        return np.stack(masks).reshape(-1, *size)

    reference = pipeline("fp32")
    if reference is None:
        return "fp32 TFLite pipeline unavailable"
    quality = {}
    for fmt, _ in TFLITE_FORMATS[1:]:
        masks = pipeline(fmt)
        if masks is None:
            continue
        inter = np.logical_and(masks, reference).sum(axis=(1, 2))
        union = np.logical_or(masks, reference).sum(axis=(1, 2))
        # Two empty masks agree perfectly.
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        quality[fmt] = {"mean_iou": float(iou.mean()), "min_iou": float(iou.min()), "masks": int(iou.size)}
    return quality


# ------------------------------------------------------------------------------ output

def fmt_time(seconds):
    """Milliseconds with a sensible number of digits, or the reason a cell is empty."""
    if seconds is None:
        return "-"
    if isinstance(seconds, str):
        return seconds
    ms = seconds * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_gflop(value):
    """GFLOP or GFLOP/s: one decimal for large values, three significant digits for tiny ones."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def fmt_ratio(ours, ref):
    """`ours / ref` to two decimals, or '-'."""
    if isinstance(ours, (int, float)) and isinstance(ref, (int, float)) and ref > 0:
        return f"{ours / ref:.2f}"
    return "-"


def print_table(headers, rows):
    """A GitHub-markdown table on stdout (also readable as plain text)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


# -------------------------------------------------------------------------------- main

class Report:
    """Collects benchmark rows; a row is one measurement with ours and reference values."""

    def __init__(self):
        self.rows = []

    def add(self, key, name, ours, ref, unit="s", note="", gflop=None):
        """Adds a row. `ours`/`ref` are numbers (seconds or MiB), an 'n/a ...' string, or
        `run_alternating` entries: then their medians, and when both come from the same
        alternation, the ratio of each round's pair of samples as well."""
        rounds = None
        if isinstance(ours, dict) and isinstance(ref, dict):
            a, b = ours.get("samples_s"), ref.get("samples_s")
            if a and b and len(a) == len(b):
                # Adjacent samples share the machine's state of that moment: their ratios show
                # how much of a row's ratio is the minute it ran in.
                rounds = [x / y for x, y in zip(a, b)]
        ours, ref = _value(ours), _value(ref)
        row = {"key": key, "name": name, "ours": ours, "ref": ref, "unit": unit, "note": note}
        if isinstance(ours, (int, float)) and isinstance(ref, (int, float)) and ref > 0:
            row["ratio"] = ours / ref
        if rounds:
            row["round_ratios"] = rounds
        if gflop is not None:
            row["ours_gflops"] = gflop / ours if isinstance(ours, (int, float)) else None
            row["ref_gflops"] = gflop / ref if isinstance(ref, (int, float)) else None
        self.rows.append(row)
        return row

    def get(self, key):
        """The row with `key`, or None."""
        return next((r for r in self.rows if r["key"] == key), None)


def _value(result):
    """Median seconds of a `run_alternating` entry, or its error marked 'failed'; any other
    value (a number, a reason, None) as it is."""
    if not isinstance(result, dict):
        return result
    return result.get("median_s", f"failed: {result.get('error', '?')}")


def main(argv=None):
    """Runs the selected sections and prints the environment, table and JSON line."""
    args = parse_args(argv)
    limit_blas_threads(args.threads)
    if args._child:
        return child_main(args)

    import numpy as np

    tf = import_tensorflow(args.threads, args.inter_op_threads, args.device)
    torch = import_torch(args.threads)
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: torch sees no CUDA device (torch.cuda.is_available() is False).")
    dev = torch.device("cuda" if args.device == "gpu" else "cpu")
    synced = device_sync(args.device, tf, torch)
    import keras  # noqa: F401 - imported for the version report and to fail early
    import tf_sam

    env = environment(args)
    label, config_dict = resolve_config(args)
    vision = tf_sam.SamConfig.from_dict(config_dict).vision_config.to_dict()
    size = vision["image_size"]
    flops, flops_breakdown = encoder_flops(vision)
    repeats, enc_repeats = args.repeats, args.encoder_repeats
    report = Report()
    extra = {"config": label, "encoder_gflop": flops / 1e9,
             "encoder_gflop_breakdown": {k: v / 1e9 for k, v in flops_breakdown.items()}}
    log(f"config {label}; encoder {fmt_gflop(flops / 1e9)} GFLOP per image; sections {args.sections}")

    if "machine" in args.sections:
        n = 1024 if args.tiny else 4096
        log(f"machine: {n}x{n} fp32 matmul")
        extra["matmul"] = measure_matmul_gflops(n, tries=3)

    # Same weights on both sides, through the public loading path.
    log("building the reference model with perturbed random weights")
    t0 = time.perf_counter()
    hf = build_reference(config_dict, args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="tf_sam_bench_")
    hf.save_pretrained(tmp.name)
    log(f"saved reference weights in {time.perf_counter() - t0:.1f}s; loading them into tf_sam")
    t0 = time.perf_counter()
    model = tf_sam.SamModel.from_pretrained(tmp.name)
    extra["tf_sam_load_s"] = time.perf_counter() - t0
    hf.to(dev)
    policy, mixed = mixed_policy(args.device), None
    if {"encoder", "decoder"} & set(args.sections):
        log(f"loading the same weights into tf_sam under {policy}")
        mixed = load_mixed(tf_sam, tmp.name, policy)
        extra["mixed_precision"] = {"policy": policy}

    children = {}
    if "memory" in args.sections and args.tiny:
        # Smoke run: overlap the children's interpreter start-up with everything else;
        # --tiny timings are not meaningful anyway (printed as such).
        log("memory: starting the ours and reference children")
        children = {side: start_memory_child(side, tmp.name, args) for side in ("ours", "ref")}

    rng = np.random.default_rng(args.seed)
    pixels = rng.standard_normal((1, size, size, 3)).astype(np.float32)
    pixels_tf = tf.constant(pixels)
    pixels_pt = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(dev)

    def ref_encoder():
        with torch.inference_mode():
            return hf.get_image_embeddings(pixels_pt)

    # Embeddings cached once per side, as an interactive app would.
    log("computing cached embeddings on both sides")
    emb_tf = model.get_image_embeddings(pixels_tf)
    emb_pt = ref_encoder()
    extra["parity_encoder_max_rel_err"] = max_rel_err(
        emb_tf.numpy(), emb_pt.cpu().numpy().transpose(0, 2, 3, 1))

    if "encoder" in args.sections:
        encoder_fn = tf.function(lambda x: model.vision_encoder(x), jit_compile=False)
        encoder_xla = tf.function(lambda x: model.vision_encoder(x), jit_compile=True)
        mixed_fn = tf.function(lambda x: mixed.vision_encoder(x), jit_compile=False)
        mixed_xla = tf.function(lambda x: mixed.vision_encoder(x), jit_compile=True)
        res = run_alternating([(name, synced(fn)) for name, fn in (
            ("ours eager", lambda: model.get_image_embeddings(pixels_tf)),
            ("ours tf.function", lambda: encoder_fn(pixels_tf)),
            ("ours XLA", lambda: encoder_xla(pixels_tf)),
            (f"ours {policy} tf.function", lambda: mixed_fn(pixels_tf)),
            (f"ours {policy} XLA", lambda: mixed_xla(pixels_tf)),
            ("reference", ref_encoder),
        )], enc_repeats, args.min_sample_s, "encoder")
        ref = res["reference"]
        report.add("encoder_eager", "encoder, 1 image: Keras eager get_image_embeddings",
                   res["ours eager"], ref, gflop=flops / 1e9)
        report.add("encoder_tf_function", "encoder, 1 image: tf.function(jit_compile=False)",
                   res["ours tf.function"], ref, gflop=flops / 1e9)
        report.add("encoder_xla", "encoder, 1 image: tf.function(jit_compile=True) XLA",
                   res["ours XLA"], ref, gflop=flops / 1e9)
        report.add("encoder_mixed_tf_function", f"encoder, 1 image: tf.function, {policy} (ref fp32)",
                   res[f"ours {policy} tf.function"], ref, gflop=flops / 1e9)
        report.add("encoder_mixed_xla", f"encoder, 1 image: XLA, {policy} (ref fp32)",
                   res[f"ours {policy} XLA"], ref, gflop=flops / 1e9)
        try:
            low = tf.cast(mixed_fn(pixels_tf), tf.float32).numpy()
            extra["mixed_precision"]["encoder_max_abs_err"] = float(np.abs(low - emb_tf.numpy()).max())
            extra["mixed_precision"]["encoder_max_abs"] = float(np.abs(emb_tf.numpy()).max())
        except Exception as e:  # noqa: BLE001 - agreement is informative only
            extra["mixed_precision"]["encoder_max_abs_err"] = f"failed: {short_error(e)}"

    if "decoder" in args.sections:
        decoder_cache = tf.function(model.get_decoder_cache)(emb_tf)  # as SamPredictor.set_image
        for key, count in (("single_prompt", 1), ("prompts_64", 64)):
            pts = (rng.random((1, count, 1, 2)) * size).astype(np.float32)
            lbl = np.ones((1, count, 1), np.int32)
            pts_tf, lbl_tf = tf.constant(pts), tf.constant(lbl)
            pts_pt, lbl_pt = torch.from_numpy(pts).to(dev), torch.from_numpy(lbl.astype(np.int64)).to(dev)

            def ours_eager(pts_tf=pts_tf, lbl_tf=lbl_tf):
                return model(image_embeddings=emb_tf, input_points=pts_tf, input_labels=lbl_tf,
                             multimask_output=True)

            def decode(emb, p, lab, sam=model):
                out = sam(image_embeddings=emb, input_points=p, input_labels=lab, multimask_output=True)
                return out["iou_scores"], out["pred_masks"]

            def decode_mixed(emb, p, lab):
                return decode(emb, p, lab, sam=mixed)

            def decode_cached(cache, p, lab):
                out = model.decode_with_cache(cache, input_points=p, input_labels=lab, multimask_output=True)
                return out["iou_scores"], out["pred_masks"]

            dec_fn = tf.function(decode, jit_compile=False)
            cached_fn = tf.function(decode_cached)
            dec_xla = tf.function(decode, jit_compile=True)
            mixed_fn = tf.function(decode_mixed, jit_compile=False)
            mixed_xla = tf.function(decode_mixed, jit_compile=True)

            def ref_decode(pts_pt=pts_pt, lbl_pt=lbl_pt):
                with torch.inference_mode():
                    return hf(image_embeddings=emb_pt, input_points=pts_pt, input_labels=lbl_pt,
                              multimask_output=True)

            res = run_alternating([(name, synced(fn)) for name, fn in (
                ("ours eager", ours_eager),
                ("ours tf.function", lambda: dec_fn(emb_tf, pts_tf, lbl_tf)),
                ("ours XLA", lambda: dec_xla(emb_tf, pts_tf, lbl_tf)),
                ("ours cached", lambda: cached_fn(decoder_cache, pts_tf, lbl_tf)),
                (f"ours {policy} tf.function", lambda: mixed_fn(emb_tf, pts_tf, lbl_tf)),
                (f"ours {policy} XLA", lambda: mixed_xla(emb_tf, pts_tf, lbl_tf)),
                ("reference", ref_decode),
            )], repeats, args.min_sample_s, f"decoder x{count}")
            if count == 1:
                fp32_masks = ours_eager().pred_masks.numpy()
                extra["parity_decoder_masks_max_rel_err"] = max_rel_err(
                    fp32_masks, ref_decode().pred_masks.cpu().numpy())
                try:
                    low = tf.cast(mixed_fn(emb_tf, pts_tf, lbl_tf)[1], tf.float32).numpy()
                    extra["mixed_precision"]["mask_sign_agreement"] = float(((low > 0) == (fp32_masks > 0)).mean())
                except Exception as e:  # noqa: BLE001 - agreement is informative only
                    extra["mixed_precision"]["mask_sign_agreement"] = f"failed: {short_error(e)}"
            what = "1 point" if count == 1 else "64 prompts x 1 point, one call"
            ref = res["reference"]
            report.add(f"{key}_eager", f"decode {what}: Keras eager", res["ours eager"], ref)
            report.add(f"{key}_tf_function", f"decode {what}: tf.function", res["ours tf.function"], ref)
            report.add(f"{key}_xla", f"decode {what}: XLA", res["ours XLA"], ref)
            # SamPredictor's path: the decoder's image-only work done once per image. Not
            # a target row: the reference is given only the embeddings.
            report.add(f"{key}_cached", f"decode {what}: tf.function, per-image decoder cache (SamPredictor)",
                       res["ours cached"], ref)
            report.add(f"{key}_mixed_tf_function", f"decode {what}: tf.function, {policy} (ref fp32)",
                       res[f"ours {policy} tf.function"], ref)
            report.add(f"{key}_mixed_xla", f"decode {what}: XLA, {policy} (ref fp32)",
                       res[f"ours {policy} XLA"], ref)

    if "e2e" in args.sections:
        SamProcessor, reason = detect_processor()
        if SamProcessor is None:
            report.add("e2e", "end-to-end photo -> mask", reason, None)
        else:
            import transformers

            photo, photo_name = load_photo(args.tiny)
            h, w = photo.shape[:2]
            point = [[[0.45 * w, 0.55 * h]]]
            ours_proc = SamProcessor.for_model(model) if hasattr(SamProcessor, "for_model") else SamProcessor()
            hf_proc = transformers.SamProcessor(image_processor=hf_image_processor(vision))

            def ours_e2e():
                inputs = ours_proc(photo, input_points=point, input_labels=[[1]], return_tensors="np")
                emb = model.get_image_embeddings(inputs["pixel_values"])
                out = model(image_embeddings=emb, input_points=inputs["input_points"],
                            input_labels=inputs["input_labels"], multimask_output=True)
                return ours_proc.post_process_masks(out.pred_masks.numpy(), inputs["original_sizes"],
                                                    inputs["reshaped_input_sizes"])

            def ref_e2e():
                inputs = hf_proc(images=photo, input_points=point, input_labels=[[1]], return_tensors="pt")
                with torch.inference_mode():
                    emb = hf.get_image_embeddings(inputs["pixel_values"])
                    out = hf(image_embeddings=emb, input_points=inputs["input_points"],
                             input_labels=inputs["input_labels"], multimask_output=True)
                return hf_proc.image_processor.post_process_masks(
                    out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])

            res = run_alternating([("ours", ours_e2e), ("reference", ref_e2e)], enc_repeats,
                                  args.min_sample_s, "e2e")
            try:
                a, b = np.asarray(ours_e2e()[0]), ref_e2e()[0].numpy()
                extra["e2e_mask_agreement"] = float((a == b).mean())
            except Exception as e:  # noqa: BLE001 - agreement is informative only
                extra["e2e_mask_agreement"] = f"failed: {short_error(e)}"
            report.add("e2e", f"end-to-end photo -> mask ({photo_name}, eager)",
                       res["ours"], res["reference"])

    # The memory children run while the exports are written and converted: that work is
    # untimed, and VmHWM is per process, so sharing the cores only slows both down.
    if "memory" in args.sections and not children:
        log("memory: starting the ours and reference children")
        children = {side: start_memory_child(side, tmp.name, args) for side in ("ours", "ref")}
    artefacts = None
    if "export" in args.sections:
        export, reason = detect_export()
        if export is None:
            artefacts = {"saved_model": reason, "tflite_bytes": {}, "interpreter": None,
                         **{("tflite", fmt, part): reason for fmt, _ in TFLITE_FORMATS
                            for part in ("encoder", "decoder")}}
        else:
            artefacts = prepare_exports(export, model, tmp.name, args)
    if children:
        log("memory: waiting for the children")
        ours_mem, ref_mem = finish_memory_child(children["ours"]), finish_memory_child(children["ref"])
        extra["memory_children"] = {"ours": ours_mem, "ref": ref_mem}
        mib = lambda m: m["vmhwm_kib"] / 1024 if "vmhwm_kib" in m else f"failed: {m.get('error')}"  # noqa: E731
        report.add("peak_memory",
                   "peak RSS (VmHWM), encoder + 64 prompts, own process (ours: tf.function, as SamPredictor)",
                   mib(ours_mem), mib(ref_mem), unit="MiB")
    if artefacts is not None:
        extra["tflite_bytes"] = artefacts["tflite_bytes"]
        extra["tflite_interpreter"] = artefacts["interpreter"]
        extra["tflite_mask_iou_vs_fp32"] = measure_exports(artefacts, model, hf, vision, args, report, flops)

    if "amg" in args.sections:
        generator_cls, reason = detect_amg()
        if generator_cls is None:
            report.add("amg", "automatic mask generation, 32 points per side", reason, None)
        else:
            photo, photo_name = load_photo(args.tiny)
            candidates = []
            try:
                ours_gen = generator_cls(model, points_per_side=32)
                candidates.append(("ours", lambda: ours_gen.generate(photo)))
            except Exception as e:  # noqa: BLE001
                report.add("amg", "automatic mask generation, 32 points per side",
                           f"failed: {short_error(e)}", None)
            if candidates:
                try:
                    import transformers

                    pipe = transformers.pipeline("mask-generation", model=hf,
                                                 image_processor=hf_image_processor(vision), device=-1)
                    from PIL import Image

                    pil = Image.fromarray(photo)
                    pre, forward, _ = pipe._sanitize_parameters(points_per_batch=64, points_per_crop=32)

                    def ref_amg():
                        # HF's preprocess + forward (filtering, RLE) as its pipeline runs them; its
                        # final cross-crop NMS needs torchvision, absent here, so ours stands in
                        # for that one cheap step.
                        outs = [pipe.forward(inputs, **forward) for inputs in pipe.preprocess(pil, **pre)]
                        rles = [rle for out in outs for rle in out["masks"]]
                        scores = np.concatenate([out["iou_scores"].numpy() for out in outs])
                        boxes = np.concatenate([out["boxes"].numpy() for out in outs])
                        return tf_sam.amg.post_process_for_mask_generation(rles, scores, boxes, 0.7)

                    candidates.append(("reference", ref_amg))
                except Exception as e:  # noqa: BLE001 - the reference may need torchvision
                    log(f"amg: reference pipeline unavailable: {short_error(e)}")
                res = run_alternating(candidates, enc_repeats, args.min_sample_s, "amg")
                report.add("amg", f"automatic mask generation, 32 points per side ({photo_name}; ref NMS by tf_sam)",
                           res["ours"], res.get("reference"))
            # One child at a time: each reports its own peak, and running them together
            # would only slow both down on a small machine.
            for keep_all, suffix in ((False, ""), (True, "_keep_all")):
                peaks = {}
                for side in (16, 64):
                    log(f"amg: peak memory at {side} points per side{' keeping every mask' * keep_all} (own process)")
                    peaks[side] = finish_memory_child(
                        start_memory_child("amg", tmp.name, args, points_per_side=side, keep_all=keep_all))
                extra["amg_memory_children" + suffix] = peaks
                if all("vmhwm_kib" in p for p in peaks.values()):
                    extra["amg_peak_ratio_64_vs_16" + suffix] = peaks[64]["vmhwm_kib"] / peaks[16]["vmhwm_kib"]

    tmp.cleanup()
    env["loadavg_1min_at_end"] = os.getloadavg()[0]
    print_results(env, report, extra, flops)


def evaluate_targets(report, device="cpu"):
    """`[(target, limit, ratio or None, met, checked-on row name)]` for the issue's targets.

    The CPU targets compare fp32 with fp32; the GPU throughput target takes the best
    encoder row, mixed precision included, and applies only to `--device gpu` runs.
    """

    def keys(prefix):
        return [r["key"] for r in report.rows if r["key"].startswith(prefix)]

    def best(names):
        rows = [report.get(k) for k in names]
        rows = [r for r in rows if r and "ratio" in r]
        return min(rows, key=lambda r: r["ratio"]) if rows else None

    checks = [
        ("encoder_keras", best(["encoder_eager"])),
        ("best_deployable", best(["encoder_tf_function", "encoder_xla"] + keys("export_encoder"))),
        ("single_prompt", best(["single_prompt_eager", "single_prompt_tf_function", "single_prompt_xla"]
                               + keys("export_single_prompt"))),
        ("prompts_64", best(["prompts_64_eager", "prompts_64_tf_function", "prompts_64_xla"]
                            + keys("export_prompts_64"))),
        ("peak_memory", best(["peak_memory"])),
        ("gpu_throughput", best(keys("encoder_")) if device == "gpu" else None),
    ]
    out = []
    for name, row in checks:
        limit = TARGETS[name]
        ratio = row["ratio"] if row else None
        out.append((name, limit, ratio, None if ratio is None else ratio <= limit, row["name"] if row else "-"))
    return out


def print_results(env, report, extra, flops):
    """Prints environment, machine figures, the results table, targets and the JSON line."""
    print(f"# tf_sam vs transformers.SamModel (PyTorch), {env['device'].upper()} — "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    print()
    print(f"- CPU: {env['cpu']} ({', '.join(env['simd']) or 'no AVX'}); logical CPUs {env['logical_cpus']}, "
          f"usable {env['usable_cpus']}; threads per side {env['threads']} "
          f"(TF inter-op {env['tf_inter_op_threads']})")
    if env["cpu_idle"]:
        print(f"- cpuidle: {env['cpu_idle']} (0: idle vCPUs halt without polling first)")
    if extra["config"] == "tiny":
        print("- --tiny smoke run: checks that every path works; its timings mean nothing")
    print(f"- 1-minute load average: {env['loadavg_1min_at_start']:.2f} at start, "
          f"{env['loadavg_1min_at_end']:.2f} at end (above {env['usable_cpus']} means other jobs shared the cores)")
    print(f"- Python {env['python']}, TensorFlow {env['tensorflow']}, Keras {env['keras']}, torch {env['torch']}, "
          f"transformers {env['transformers']}; TF_ENABLE_ONEDNN_OPTS={env['TF_ENABLE_ONEDNN_OPTS']}")
    print(f"- config: {extra['config']}; encoder FLOPs (analytic, 2 per MAC): {fmt_gflop(flops / 1e9)} GFLOP per image ("
          + ", ".join(f"{k} {fmt_gflop(v)}" for k, v in extra["encoder_gflop_breakdown"].items()) + ")")
    if "matmul" in extra:
        m = extra["matmul"]
        print(f"- machine fp32 matmul {m['n']}x{m['n']} (best of 3): numpy {m['numpy_gflops']:,.1f} GFLOP/s, "
              f"TF {m['tf_gflops']:,.1f} GFLOP/s")
    parity = [f"encoder max rel err {extra['parity_encoder_max_rel_err']:.1e}"]
    if "parity_decoder_masks_max_rel_err" in extra:
        parity.append(f"1-point mask logits max rel err {extra['parity_decoder_masks_max_rel_err']:.1e}")
    if "e2e_mask_agreement" in extra:
        agreement = extra["e2e_mask_agreement"]
        parity.append("e2e mask pixel agreement " + (f"{agreement:.4%}" if isinstance(agreement, float)
                                                      else str(agreement)))
    print("- same weights check: " + "; ".join(parity))
    low = extra.get("mixed_precision")
    if low and len(low) > 1:
        err, scale = low.get("encoder_max_abs_err", "-"), low.get("encoder_max_abs")
        agree = low.get("mask_sign_agreement", "-")
        print(f"- {low['policy']} vs our fp32: image embeddings max abs diff "
              + (f"{err:.3g} (largest |value| {scale:.3g})" if isinstance(err, float) else str(err))
              + "; 1-point mask logits of equal sign "
              + (f"{agree:.2%}" if isinstance(agree, float) else str(agree)))
    if extra.get("tflite_bytes"):
        print("- TFLite file sizes: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in extra["tflite_bytes"].items())
              + f" (interpreter: {extra.get('tflite_interpreter')})")
    for suffix, how in (("", "default thresholds"), ("_keep_all", "thresholds 0, every mask upscaled")):
        if "amg_peak_ratio_64_vs_16" + suffix in extra:
            p = extra["amg_memory_children" + suffix]
            print(f"- automatic mask generation peak RSS ({how}): {p[16]['vmhwm_kib'] / 1024:,.0f} MiB at 16 points "
                  f"per side, {p[64]['vmhwm_kib'] / 1024:,.0f} MiB at 64 "
                  f"(ratio {extra['amg_peak_ratio_64_vs_16' + suffix]:.2f}, limit 1.5)")
    quality = extra.get("tflite_mask_iou_vs_fp32")
    if isinstance(quality, dict) and quality:
        print("- TFLite quantised vs fp32, binary masks at photo size: " + "; ".join(
            f"{fmt} mean IoU {q['mean_iou']:.4f} (min {q['min_iou']:.4f}, {q['masks']} masks)"
            for fmt, q in quality.items()))
    elif quality:
        print(f"- TFLite quantised vs fp32 mask IoU: {quality}")
    print()

    rows = []
    for r in report.rows:
        if r["unit"] == "MiB":
            cell = lambda v: f"{v:,.0f} MiB" if isinstance(v, (int, float)) else (v or "-")  # noqa: E731
            ours, ref = cell(r["ours"]), cell(r["ref"])
        else:
            ours, ref = fmt_time(r["ours"]), fmt_time(r["ref"])
        gf = ""
        if r.get("ours_gflops") or r.get("ref_gflops"):
            g = lambda v: fmt_gflop(v) if v else "-"  # noqa: E731
            gf = f"{g(r.get('ours_gflops'))} / {g(r.get('ref_gflops'))}"
        spread = ""
        if r.get("round_ratios"):
            q = sorted(r["round_ratios"])
            spread = f"{q[0]:.2f} / {statistics.median(q):.2f} / {q[-1]:.2f}"
        rows.append([r["name"], ours, ref, fmt_ratio(r["ours"], r["ref"]), spread, gf])
    print_table(["measurement", "ours", "reference", "ours/ref", "per-round ratio min / median / max",
                 "GFLOP/s ours / ref"], rows)
    print()

    targets = evaluate_targets(report, env["device"])
    trows = [[name, f"<= {limit:.3g}", "-" if ratio is None else f"{ratio:.2f}",
              "n/a" if met is None else ("MET" if met else "not met"), on] for name, limit, ratio, met, on in targets]
    print_table(["target", "ratio limit", "best ratio", "status", "checked on"], trows)
    print()

    payload = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": env,
        "rows": report.rows,
        "targets": [dict(name=n, limit=l, ratio=r, met=m, row=o) for n, l, r, m, o in targets],
        **extra,
    }
    print("BENCHMARK_JSON " + json.dumps(payload, default=str), flush=True)


if __name__ == "__main__":
    main()
