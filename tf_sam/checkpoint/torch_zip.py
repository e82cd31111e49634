"""Reads PyTorch `torch.save` zip checkpoints without importing torch.

`pytorch_model.bin` and Meta's `.pth` files are zip archives holding a pickle whose
tensors point at raw storages stored beside it. A restricted unpickler rebuilds only
state-dict structure (dicts, tensors) and refuses every other global, so loading an
untrusted checkpoint cannot run code; tensors stay on disk until read one at a time,
which keeps conversion memory near one copy of the weights.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


_NUMPY_GLOBALS = {
    (m, n)
    for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    for n in ("scalar", "_reconstruct")
} | {("numpy", "dtype"), ("numpy", "ndarray")}


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, archive, key, dtype):
        self.archive, self.key, self.dtype = archive, key, dtype


class LazyTensor:
    """A tensor in a checkpoint: shape and dtype now, values on `numpy()`."""

    def __init__(self, storage, offset, size, stride):
        self._storage = storage
        self._offset = offset
        self.shape = tuple(int(s) for s in size)
        self._stride = tuple(int(s) for s in stride)

    @property
    def dtype(self):
        return self._storage.dtype

    def numpy(self) -> np.ndarray:
        """Reads this tensor's bytes from the archive as a contiguous float32/int array."""
        storage = self._storage
        raw = storage.archive.read_record(storage.key)
        if storage.dtype == "bfloat16":
            # bfloat16 is the top half of a float32.
            halves = np.frombuffer(raw, dtype=np.uint16)
            flat = (halves.astype(np.uint32) << 16).view(np.float32)
        else:
            flat = np.frombuffer(raw, dtype=storage.dtype)
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self._offset:], shape=self.shape, strides=tuple(s * item for s in self._stride)
        )
        return np.array(view, copy=True)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("builtins", "set"): set,
    }

    def __init__(self, file, archive):
        super().__init__(file)
        self._archive = archive

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _NUMPY_GLOBALS:
            # Training scripts sometimes pickle numpy scalars or arrays (e.g. epoch counters).
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(
            f"checkpoint contains a non-tensor object {module}.{name}; refusing to unpickle it "
            "(only plain state dicts are read)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        return _Storage(self._archive, str(key), storage_type.dtype)


class _Archive:
    def __init__(self, path):
        self._zip = zipfile.ZipFile(path)
        names = self._zip.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a torch.save zip archive (found {len(pickles)} data.pkl entries).")
        self.prefix = pickles[0][: -len("data.pkl")]
        self.data_pkl = pickles[0]

    def read_record(self, key):
        return self._zip.read(f"{self.prefix}data/{key}")

    def open_pickle(self):
        return self._zip.open(self.data_pkl)


def load_torch_zip(path) -> dict:
    """Reads a `torch.save` zip file into `{name: LazyTensor}` (nested dicts are kept).

    Raises ValueError for files that are not torch zip archives (corrupt, legacy
    format, or another file type) and `pickle.UnpicklingError` for pickles holding
    anything but tensors and containers.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a PyTorch zip checkpoint (corrupt, truncated, or saved with the legacy "
            "pre-1.6 format; re-save it with torch.save in a recent PyTorch)."
        )
    try:
        archive = _Archive(path)
        with archive.open_pickle() as f:
            return _Unpickler(f, archive).load()
    except (zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"{path} is a corrupt PyTorch checkpoint: {e}") from None
