"""Loading SAM from every checkpoint users have, and saving our own format.

Sources accepted by `load_pretrained`:
1. a directory written by `save_pretrained` (`config.json` + `model.weights.h5`);
2. a Hugging Face directory (`config.json` + `model.safetensors` or
   `pytorch_model.bin`, either possibly sharded with an `*.index.json`);
3. a Meta checkpoint file (`sam_vit_b_01ec64.pth`, MedSAM, ...), architecture inferred
   from tensor shapes; a lone HF-layout weights file uses the `config.json` beside it;
4. a `.keras` whole-model file;
5. a Hub id such as `facebook/sam-vit-base`, downloaded once with `huggingface_hub`,
   converted and cached under `$TF_SAM_CACHE` (default `~/.cache/tf_sam`).
Conversion is strict: missing, unexpected or mis-shaped tensors raise `CheckpointError`
listing every offending name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import numpy as np

from tf_sam.checkpoint import hf_names, meta_names
from tf_sam.checkpoint.torch_zip import load_torch_zip
from tf_sam.config import SamConfig

WEIGHTS_NAME = "model.weights.h5"
CONFIG_NAME = "config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted: corrupt, or tensors missing/unexpected/mis-shaped."""


class _Entry:
    """One tensor of a checkpoint: its PyTorch-layout shape, and a reader."""

    def __init__(self, shape, read):
        self.shape = tuple(int(s) for s in shape)
        self.read = read


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _safetensors_entries(path, handles):
    """Indexes a safetensors file; each tensor is read with one positioned read.

    safetensors' own `safe_open` memory-maps the file, and every page it touches stays
    resident, adding a second copy of the weights to the process; reading by offset
    keeps conversion at one model copy plus one tensor. The header parsing follows the
    format's specification (8-byte little-endian length, JSON header, raw data).
    """
    try:
        handle = open(path, "rb")
        (header_len,) = np.frombuffer(handle.read(8), dtype="<u8")
        if header_len > os.path.getsize(path) - 8:
            raise ValueError("header length exceeds the file size")
        header = json.loads(handle.read(int(header_len)))
    except (ValueError, UnicodeDecodeError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    handles.append(handle)
    data_start = 8 + int(header_len)

    def reader(info, key):
        def read():
            begin, end = info["data_offsets"]
            handle.seek(data_start + begin)
            raw = handle.read(end - begin)
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}.")
            if dtype == "bfloat16":
                array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            if array.size != int(np.prod(info["shape"])):
                raise CheckpointError(f"{path} is truncated or corrupt: tensor {key} has the wrong size.")
            return array.reshape(info["shape"])
        return read

    return {
        key: _Entry(info["shape"], reader(info, key))
        for key, info in header.items()
        if key != "__metadata__"
    }


def _torch_entries(path):
    try:
        state = load_torch_zip(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    for wrapper in ("model", "state_dict", "model_state_dict"):
        # Training checkpoints nest the weights under one of these keys.
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    entries = {}
    for key, tensor in state.items():
        if hasattr(tensor, "numpy") and hasattr(tensor, "shape"):
            entries[key] = _Entry(tensor.shape, tensor.numpy)
    return entries


def _file_entries(path, handles):
    if path.endswith(".safetensors"):
        return _safetensors_entries(path, handles)
    return _torch_entries(path)


def _directory_weight_files(directory):
    """Weight files of an HF directory, preferring safetensors, following shard indexes."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if os.path.isfile(os.path.join(directory, single)):
            return [os.path.join(directory, single)]
        index_path = os.path.join(directory, index)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
            if missing:
                raise CheckpointError(f"{index_path} lists shards that are missing: {', '.join(missing)}.")
            return [os.path.join(directory, s) for s in shards]
    raise CheckpointError(
        f"{directory} has a config.json but no weights: expected {WEIGHTS_NAME}, model.safetensors or "
        "pytorch_model.bin (or their sharded *.index.json)."
    )


def read_checkpoint(files):
    """Opens checkpoint files.

    Returns `(entries, meta_config, handles)`: `entries` maps HF names to tensors (Meta
    names are renamed here, so everything downstream speaks HF), `meta_config` is the
    architecture inferred from a Meta checkpoint's shapes (None for HF layouts), and
    `handles` keeps memory-mapped files open while tensors are read.
    """
    handles, entries = [], {}
    for path in files:
        entries.update(_file_entries(path, handles))
    if not entries:
        raise CheckpointError(f"{', '.join(files)} holds no tensors.")
    prefix = meta_names.strip_wrapper_prefix(list(entries))
    if prefix:
        entries = {k[len(prefix):]: v for k, v in entries.items()}
    meta_config = None
    if meta_names.is_meta_state_dict(entries):
        meta_config = meta_names.infer_config({k: e.shape for k, e in entries.items()})
        depths = meta_names.mlp_head_depths(entries)
        entries = {meta_names.meta_to_hf_name(k, depths): v for k, v in entries.items()}
    return entries, meta_config, handles


def assign_checkpoint(model, entries, source="checkpoint"):
    """Copies checkpoint tensors (HF names, PyTorch layouts) into `model`'s variables.

    Raises `CheckpointError` listing every missing, unexpected and mis-shaped tensor
    before anything is assigned. Tensors are read one at a time.
    """
    entries = dict(entries)
    for alias, main in hf_names.TIED_ALIASES.items():
        if alias in entries:
            aliased = entries.pop(alias)
            entries.setdefault(main, aliased)
    table = hf_names.hf_variable_table(model)
    missing = sorted(set(table) - set(entries))
    unexpected = sorted(set(entries) - set(table))
    mismatched = []
    for name in sorted(set(table) & set(entries)):
        variable, kind = table[name]
        expected = hf_names.to_torch_layout(np.empty(variable.shape, dtype=np.bool_), kind).shape
        if tuple(expected) != entries[name].shape:
            mismatched.append(f"{name}: checkpoint {entries[name].shape} vs model {tuple(expected)}")
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model architecture:"]
        for title, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if names:
                shown = names[:25] + ([f"... and {len(names) - 25} more"] if len(names) > 25 else [])
                lines.append(f"  {len(names)} {title}: " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))
    for name, (variable, kind) in table.items():
        array = hf_names.to_keras_layout(np.asarray(entries[name].read()), kind)
        variable.assign(array.astype(variable.dtype, copy=False))


def _build_and_assign(config, files, source):
    from tf_sam.modeling.sam_model import SamModel

    entries, meta_config, handles = read_checkpoint(files)
    model = SamModel(config or meta_config)
    assign_checkpoint(model, entries, source)
    del handles
    return model


def load_pretrained(source, cache_dir=None, config=None):
    """Builds a `SamModel` from any supported source (see the module docstring).

    Args:
        source: path or Hub id.
        cache_dir: where Hub downloads are converted to (default `default_cache_dir()`).
        config: a `SamConfig` overriding the one found or inferred; needed only for
            Meta-format files of unusual models (the decoder head count is not visible
            in tensor shapes and is assumed to be SAM's 8).
    """
    from tf_sam.modeling.sam_model import SamModel

    source = os.fspath(source)
    if os.path.isdir(source):
        config_path = os.path.join(source, CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{source} has no {CONFIG_NAME}; it is not a SAM checkpoint directory.")
        config = config or SamConfig.from_json_file(config_path)
        ours = os.path.join(source, WEIGHTS_NAME)
        if os.path.isfile(ours):
            model = SamModel(config)
            try:
                model.load_weights(ours)
            except Exception as e:  # Keras/h5py raise many types for a bad file
                raise CheckpointError(f"{ours} could not be loaded into a model built from {config_path}: {e}") from None
            return model
        return _build_and_assign(config, _directory_weight_files(source), source)
    if os.path.isfile(source):
        if source.endswith(".keras"):
            import keras

            return keras.models.load_model(source)
        entries, meta_config, handles = read_checkpoint([source])
        config = config or meta_config
        if config is None:
            config_path = os.path.join(os.path.dirname(os.path.abspath(source)), CONFIG_NAME)
            if not os.path.isfile(config_path):
                raise CheckpointError(
                    f"{source} uses Hugging Face names but has no {CONFIG_NAME} beside it; pass the "
                    "directory that holds both."
                )
            config = SamConfig.from_json_file(config_path)
        model = SamModel(config)
        assign_checkpoint(model, entries, source)
        del handles
        return model
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return _load_from_hub(source, cache_dir, config)
    raise FileNotFoundError(
        f"No checkpoint at {source!r}: not a file, not a directory, and not a Hub id like 'facebook/sam-vit-base'."
    )


def save_pretrained(model, directory):
    """Writes `config.json` and `model.weights.h5` into `directory` (replacing them atomically)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tf_sam-", dir=directory)
    try:
        model.config.save_pretrained(staging)
        model.save_weights(os.path.join(staging, WEIGHTS_NAME))
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_cache_dir():
    """Where Hub downloads are converted to: `$TF_SAM_CACHE` or `~/.cache/tf_sam`."""
    return os.environ.get("TF_SAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tf_sam")


def _offline_message(repo_id, reason):
    return (
        f"Could not download {repo_id!r} from the Hugging Face Hub ({reason}). If this machine is offline, "
        "pass a local checkpoint instead: a directory with config.json and model.safetensors (for example "
        f"from `huggingface-cli download {repo_id}` on a connected machine), a Meta .pth file such as "
        "sam_vit_b_01ec64.pth, or a directory written by `tf-sam convert`."
    )


def _load_from_hub(repo_id, cache_dir=None, config=None):
    from tf_sam.modeling.sam_model import SamModel

    target = os.path.join(cache_dir or default_cache_dir(), "hub", repo_id.replace("/", "--"))
    if os.path.isfile(os.path.join(target, WEIGHTS_NAME)):
        return load_pretrained(target, config=config)
    try:
        import huggingface_hub
    except ImportError:
        raise OSError(_offline_message(repo_id, "huggingface_hub is not installed: pip install huggingface_hub")) from None
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]
        )
        if not any(n.endswith(".safetensors") for n in os.listdir(snapshot)):
            snapshot = huggingface_hub.snapshot_download(
                repo_id, allow_patterns=["config.json", "pytorch_model*.bin", "pytorch_model.bin.index.json"]
            )
    except Exception as e:  # huggingface_hub raises several error types when offline
        raise OSError(_offline_message(repo_id, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")) from None
    model = load_pretrained(snapshot, config=config)
    save_pretrained(model, target)
    return model
