"""TensorProto <-> Python lists, without numpy (clients never need numpy for predictions)."""

from __future__ import annotations

import array
import math
import struct
import sys

from clients import protos

_DT = protos.DataType
# dtype -> (TensorProto field holding values, array/struct format of tensor_content).
_LAYOUT = {
    _DT.Value("DT_FLOAT"): ("float_val", "f"),
    _DT.Value("DT_DOUBLE"): ("double_val", "d"),
    _DT.Value("DT_INT32"): ("int_val", "i"),
    _DT.Value("DT_INT16"): ("int_val", "h"),
    _DT.Value("DT_INT8"): ("int_val", "b"),
    _DT.Value("DT_UINT8"): ("int_val", "B"),
    _DT.Value("DT_UINT16"): ("int_val", "H"),
    _DT.Value("DT_INT64"): ("int64_val", "q"),
    _DT.Value("DT_UINT32"): ("uint32_val", "I"),
    _DT.Value("DT_UINT64"): ("uint64_val", "Q"),
    _DT.Value("DT_BOOL"): ("bool_val", "?"),
    _DT.Value("DT_HALF"): ("half_val", "e"),
}


def string_tensor(values: list[bytes]) -> protos.TensorProto:
    """A DT_STRING vector [len(values)]."""
    tensor = protos.TensorProto(dtype=_DT.Value("DT_STRING"))
    tensor.tensor_shape.dim.add(size=len(values))
    tensor.string_val.extend(values)
    return tensor


def shape_of(tensor) -> list[int]:
    return [dim.size for dim in tensor.tensor_shape.dim]


def flat_values(tensor) -> list:
    """The tensor's values in row-major order (bytes for DT_STRING)."""
    count = math.prod(shape_of(tensor))
    if tensor.dtype == _DT.Value("DT_STRING"):
        values = list(tensor.string_val)
    else:
        if tensor.dtype not in _LAYOUT:
            raise ValueError(f"unsupported tensor dtype {_DT.Name(tensor.dtype)}")
        field, fmt = _LAYOUT[tensor.dtype]
        if tensor.tensor_content:
            if fmt in ("?", "e"):
                size = struct.calcsize(fmt)
                content = tensor.tensor_content
                values = list(struct.unpack(f"<{len(content) // size}{fmt}", content))
            else:
                # tensor_content is little-endian (TensorFlow's in-memory layout).
                values_array = array.array(fmt)
                values_array.frombytes(tensor.tensor_content)
                if sys.byteorder == "big":
                    values_array.byteswap()
                values = values_array.tolist()
        elif fmt == "e":
            # half_val holds the float16 bit patterns as int32.
            values = [struct.unpack("<e", struct.pack("<H", v & 0xFFFF))[0]
                      for v in tensor.half_val]
        else:
            values = list(getattr(tensor, field))
    # TensorProto semantics: fewer values than elements repeat the last one.
    if values and len(values) < count:
        values = values + [values[-1]] * (count - len(values))
    return values


def rows(tensor) -> list[list]:
    """A rank-2 tensor [N, k] as N lists (a rank-1 tensor as N one-element lists)."""
    shape = shape_of(tensor)
    values = flat_values(tensor)
    if len(shape) == 1:
        return [[v] for v in values]
    if len(shape) != 2:
        raise ValueError(f"expected a [batch, k] output, got shape {shape}")
    width = shape[1]
    return [values[i * width:(i + 1) * width] for i in range(shape[0])]
