"""TensorProto <-> numpy, with TF Serving's dtype names and field layout, and the bounds on
what one request's input tensors may materialise.

Request tensors are read with Tensor::FromProto's rules (tensorflow/core/framework/tensor.cc,
FromProto and FromProtoField): the shape must be a valid TensorShape (no negative or unknown
dims), tensor_content must hold exactly the declared number of elements, and a typed value
field (float_val...) with fewer values than the shape is padded with its last value (with
none, zeros), one with more is cut. What does not parse is INVALID_ARGUMENT "tensor parsing
error: ALIAS", as saved_model::GetInputValues answers (servables/tensorflow/predict_util.cc:128).

Because a few bytes can declare gigabytes that way, the declared size is counted against
the request's RequestLimits before anything is allocated. Those limits are the local
server's own options (--max_request_batch_size, --max_request_tensor_bytes), not TF Serving
flags: tensorflow_model_server allocates whatever a request declares.

Responses fill the typed value fields (float_val, int64_val, string_val...) rather than
tensor_content, as TF Serving's Predict does (Tensor::AsProtoField).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.config import DEFAULT_MAX_REQUEST_BATCH_SIZE, DEFAULT_MAX_REQUEST_TENSOR_BYTES
from serving.errors import invalid_argument

# numpy dtype per DataType enum, for the types serving requests carry.
_NUMPY = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_HALF: np.float16, types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_STRING: object,
}
# The typed value field of each DataType and its C type (ProtoHelper in tensor.cc): int_val
# carries the narrow integers, half_val the bits of DT_HALF.
_FIELD = {
    types_pb2.DT_FLOAT: ("float_val", np.float32), types_pb2.DT_DOUBLE: ("double_val", np.float64),
    types_pb2.DT_INT8: ("int_val", np.int32), types_pb2.DT_INT16: ("int_val", np.int32),
    types_pb2.DT_INT32: ("int_val", np.int32), types_pb2.DT_UINT8: ("int_val", np.int32),
    types_pb2.DT_UINT16: ("int_val", np.int32), types_pb2.DT_INT64: ("int64_val", np.int64),
    types_pb2.DT_UINT32: ("uint32_val", np.uint32), types_pb2.DT_UINT64: ("uint64_val", np.uint64),
    types_pb2.DT_BOOL: ("bool_val", np.bool_), types_pb2.DT_HALF: ("half_val", np.int32),
    types_pb2.DT_STRING: ("string_val", object),
}
# DataTypeString() spellings that differ from the enum name minus "DT_", lower-cased.
_TF_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double",
             types_pb2.DT_HALF: "half"}

# numpy's NPY_MAXDIMS. TensorFlow allows 254 (TensorShape::MaxDimensions), so a tensor of
# rank 65..254 is a (documented) local-server refusal rather than a TF Serving one.
MAX_DIMS = 64
_MAX_ELEMENTS = 2 ** 63 - 1  # TensorShape::IsValid refuses shapes whose size overflows int64.
# What one DT_STRING element costs besides its bytes: sizeof(tensorflow::tstring), which is
# what the session holds per element once the request is fed.
STRING_ELEMENT_BYTES = 24


def dtype_string(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string", and
    "unknown dtype enum (999)" for values DataType does not define (types.cc)."""
    if dtype in _TF_NAMES:
        return _TF_NAMES[dtype]
    try:
        return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()
    except ValueError:
        return f"unknown dtype enum ({dtype})"


def numpy_dtype(dtype: int):
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise invalid_argument(f"Unsupported tensor type: {dtype_string(dtype)}") from None


def datatype_of(array: np.ndarray) -> int:
    """DataType enum of a numpy array (object/bytes arrays are DT_STRING)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    for enum, np_type in _NUMPY.items():
        if np_type is not object and array.dtype == np.dtype(np_type):
            return enum
    raise invalid_argument(f"Unsupported output type: {array.dtype}")


def shape_list(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """TensorShapeProto -> dims (-1 unknown), or None for unknown rank."""
    if shape.unknown_rank:
        return None
    return [d.size for d in shape.dim]


def shape_string(dims: list[int] | None) -> str:
    if dims is None:
        return "<unknown>"
    return "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"


# --- Request limits --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request's input tensors may materialise; 0 lifts a limit (TF Serving's way).

    Attributes:
      max_batch_size: largest dimension 0 of an input tensor (and number of examples).
      max_tensor_bytes: total bytes of a request's input tensors, counted from the shapes
        they declare (DT_STRING: each element's bytes plus STRING_ELEMENT_BYTES).
    """

    max_batch_size: int = DEFAULT_MAX_REQUEST_BATCH_SIZE
    max_tensor_bytes: int = DEFAULT_MAX_REQUEST_TENSOR_BYTES

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"RequestLimits.{field.name} must be >= 0 (0: no limit), "
                                 f"got {getattr(self, field.name)}")


class _Budget:
    __slots__ = ("limits", "used")

    def __init__(self, limits: RequestLimits):
        self.limits, self.used = limits, 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("tensor_budget",
                                                                        default=None)


@contextlib.contextmanager
def request_limits(limits: RequestLimits | None):
    """Bounds the input tensors built inside (one gRPC call or REST request); None or no
    context at all (warmup replays the model's own records) means no limit."""
    token = _BUDGET.set(_Budget(limits) if limits is not None else None)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def check_batch(name: str, size: int) -> None:
    """Refuses a batch (dimension 0, or a number of examples) above the request limit."""
    budget = _BUDGET.get()
    limit = budget.limits.max_batch_size if budget is not None else 0
    if limit and size > limit:
        # Worded like the batch scheduler's own refusal (ValidateBatchTaskQueueCapacity in
        # tensorflow/core/kernels/batching_util/shared_batch_scheduler.h).
        raise invalid_argument(
            f"Input {name}: batch size {size} is larger than the maximum request batch size "
            f"{limit} (--max_request_batch_size, a local-server limit)")


def reserve_bytes(name: str, nbytes: int, what: str) -> None:
    """Counts nbytes of input name against the request's byte limit, before allocating."""
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.used += nbytes
    limit = budget.limits.max_tensor_bytes
    if limit and budget.used > limit:
        raise invalid_argument(
            f"Input {name} ({what}, {nbytes} bytes) brings the request's input tensors to "
            f"{budget.used} bytes, more than the limit of {limit} bytes "
            "(--max_request_tensor_bytes, a local-server limit)")


# --- TensorProto -> numpy ----------------------------------------------------------------

def _parse_error(name: str, detail: str):
    return invalid_argument(f"tensor parsing error: {name} ({detail})")


def _dims(proto: tensor_pb2.TensorProto, name: str) -> list[int]:
    """TensorShape::IsValid: known rank, no negative dims, an element count that fits."""
    if proto.tensor_shape.unknown_rank:
        raise _parse_error(name, "tensor_shape has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    for index, size in enumerate(dims):
        if size < 0:
            raise _parse_error(name, f"tensor_shape dim {index} is {size}; sizes must be >= 0")
    if len(dims) > MAX_DIMS:
        raise _parse_error(name, f"{len(dims)} dimensions, more than this server's {MAX_DIMS}")
    if math.prod(dims) > _MAX_ELEMENTS:
        raise _parse_error(name, f"shape {shape_string(dims)} has too many elements")
    return dims


def _declared(dtype: int, dims: list[int]) -> str:
    return f"{dtype_string(dtype)} {shape_string(dims)}"


def to_numpy(proto: tensor_pb2.TensorProto, name: str) -> np.ndarray:
    """A request TensorProto -> numpy array, with Tensor::FromProto's rules.

    Raises:
      ServingError: INVALID_ARGUMENT when it does not parse or breaks the request limits
        (checked before the array is allocated).
    """
    if proto.dtype not in _NUMPY:
        raise _parse_error(name, f"unsupported dtype {dtype_string(proto.dtype)}")
    dims = _dims(proto, name)
    count = math.prod(dims)
    if dims:
        check_batch(name, dims[0])
    if proto.dtype == types_pb2.DT_STRING:
        return _strings(proto, name, dims, count)
    np_type = _NUMPY[proto.dtype]
    itemsize = np.dtype(np_type).itemsize
    reserve_bytes(name, count * itemsize, _declared(proto.dtype, dims))
    if count == 0:  # FromProto ignores the values of an empty tensor.
        return np.zeros(dims, np_type)
    if proto.tensor_content:
        # Helper<T>::Decode: the content must be exactly the declared elements.
        if len(proto.tensor_content) != count * itemsize:
            raise _parse_error(name, f"tensor_content has {len(proto.tensor_content)} bytes, "
                               f"{_declared(proto.dtype, dims)} needs {count * itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np_type).reshape(dims)
    field, field_type = _FIELD[proto.dtype]
    values = getattr(proto, field)
    given = min(len(values), count)
    head = np.array(values[:given], dtype=field_type)
    if proto.dtype == types_pb2.DT_HALF:
        head = head.astype(np.uint16).view(np.float16)
    out = np.empty(count, dtype=np_type)
    out[:given] = head.astype(np_type)  # int_val -> int8 wraps, as the C++ cast does.
    out[given:] = head[-1] if given else 0  # FromProtoField: pad with the last value.
    return out.reshape(dims)


def _strings(proto, name: str, dims: list[int], count: int) -> np.ndarray:
    if proto.tensor_content and count:
        # TF encodes strings there as varint lengths + bytes; no client library sends it.
        raise _parse_error(name, "DT_STRING in tensor_content is not supported by this "
                           "server; send string_val")
    given = min(len(proto.string_val), count)
    head = list(proto.string_val[:given])
    last = head[-1] if head else b""
    nbytes = (count * STRING_ELEMENT_BYTES + sum(len(v) for v in head)
              + (count - given) * len(last))
    reserve_bytes(name, nbytes, _declared(proto.dtype, dims))
    out = np.empty(count, dtype=object)
    out[:given] = head
    out[given:] = last
    return out.reshape(dims)


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """numpy array -> TensorProto with the typed value field filled (AsProtoField)."""
    array = np.asarray(array)
    dtype = datatype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, _FIELD[dtype][0]).extend(flat.tolist())
    return proto
