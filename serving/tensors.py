"""TensorProto <-> numpy, with TF Serving's dtype names and field layout.

Responses fill the typed value fields (float_val, int64_val, string_val...) rather than
tensor_content, as TF Serving's Predict does (Tensor::AsProtoField).
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid_argument

# numpy dtype per DataType enum, for the types serving requests carry.
_NUMPY = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_HALF: np.float16, types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_STRING: object,
}
_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}
# DataTypeString() spellings that differ from the enum name minus "DT_", lower-cased.
_TF_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double",
             types_pb2.DT_HALF: "half"}


def dtype_string(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string"."""
    if dtype in _TF_NAMES:
        return _TF_NAMES[dtype]
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def numpy_dtype(dtype: int):
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise invalid_argument(
            f"Unsupported tensor type: {types_pb2.DataType.Name(dtype)}") from None


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


def to_numpy(proto: tensor_pb2.TensorProto, name: str) -> np.ndarray:
    """A request TensorProto -> numpy array; INVALID_ARGUMENT when it cannot be parsed."""
    import tensorflow as tf

    try:
        array = tf.make_ndarray(proto)
    except Exception as error:  # Malformed protos raise assorted errors.
        raise invalid_argument(f"tensor parsing error: {name} ({error})") from None
    if proto.dtype == types_pb2.DT_STRING:
        array = np.asarray(array, dtype=object)
    return array


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
        getattr(proto, _FIELD[dtype]).extend(flat.tolist())
    return proto
