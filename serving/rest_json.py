"""TF Serving's REST JSON formats (tensorflow_serving/util/json_tensor.cc), both ways.

Requests: {"signature_name", "instances": [...]} (row) or {"inputs": ...} (columnar);
DT_STRING values may be {"b64": "..."}; NaN/Infinity are accepted; trailing bytes after the
document are ignored (rapidjson kParseStopWhenDoneFlag). Responses: "predictions" for row
requests, "outputs" for columnar ones; string outputs named *_bytes come back as
{"b64": ...}; floats are written like WriteDecimal: %g with 6 digits when that round-trips,
else max_digits10 (9 for float32, 17 for float64), plus ".0" on whole numbers.

Errors keep TF Serving's messages, but echo at most ECHO_CHARS of a JSON value and
errors.MAX_MESSAGE_CHARS in all (TF Serving echoes the whole value, whatever its size).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2

from serving import tensors
from serving.errors import ServingError, bounded, invalid_argument

ROW, COLUMNAR = "row", "columnar"

_INT_RANGES = {
    types_pb2.DT_INT8: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_INT16: (-2 ** 31, 2 ** 31 - 1),
    types_pb2.DT_INT32: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_UINT8: (-2 ** 31, 2 ** 31 - 1),
    types_pb2.DT_INT64: (-2 ** 63, 2 ** 63 - 1), types_pb2.DT_UINT32: (0, 2 ** 32 - 1),
    types_pb2.DT_UINT64: (0, 2 ** 64 - 1),
}


# How much of a JSON value an error message echoes. JsonValueToDebugString echoes all of it
# (util/json_tensor.cc), so a 50 MB malformed body came back as a 50 MB error.
ECHO_CHARS = 1024


def debug_string(value, limit: int = ECHO_CHARS) -> str:
    """JsonValueToDebugString: the value re-serialised compactly, cut after limit chars.

    Encodes incrementally, so a huge document is not serialised just to be cut.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=True)
    parts, size = [], 0
    try:
        for chunk in encoder.iterencode(value):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        else:
            return "".join(parts)
    except RecursionError:  # Nested about as deep as the parser allows.
        pass
    return "".join(parts)[:limit] + "...(cut)"


def type_string(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def parse_json(body: bytes | str) -> dict:
    """ParseJson: a JSON object or INVALID_ARGUMENT."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if not text:  # json_tensor.cc ParseJson, before rapidjson runs.
        raise invalid_argument("JSON Parse error: The document is empty")
    stripped = text.lstrip(" \t\n\r")
    if not stripped:
        raise invalid_argument(f"JSON Parse error: {_RAPIDJSON_EMPTY} at offset: {len(text)}")
    try:
        doc, _ = json.JSONDecoder().raw_decode(stripped)  # Stops when done, as rapidjson.
    except json.JSONDecodeError as error:
        offset = error.pos + len(text) - len(stripped)
        if error.msg.startswith("Unterminated string"):  # rapidjson notices at the end.
            offset = len(text)
        raise invalid_argument(f"JSON Parse error: {_rapidjson_message(error, text, offset)} "
                               f"at offset: {offset}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: nesting too deep") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


# rapidjson's GetParseError_En wording for what Python's json reports (en.h).
_RAPIDJSON_EMPTY = "The document is empty."
_RAPIDJSON_MESSAGES = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
)


def _rapidjson_message(error: json.JSONDecodeError, text: str, offset: int) -> str:
    if error.msg.startswith("Expecting ',' delimiter"):
        return ("Missing a comma or '}' after an object member."
                if _innermost_container(text, offset) == "{"
                else "Missing a comma or ']' after an array element.")
    for python, rapidjson in _RAPIDJSON_MESSAGES:
        if error.msg.startswith(python):
            return rapidjson
    return "Unspecific syntax error."


def _innermost_container(text: str, end: int) -> str:
    """The bracket ('{' or '[') open at text[end], skipping strings."""
    stack, in_string, escaped = [], False, False
    for char in text[:end]:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), (
                in_string and (escaped or char != '"'))
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def signature_name(doc: dict) -> str:
    if "signature_name" not in doc:
        return ""
    if not isinstance(doc["signature_name"], str):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return doc["signature_name"]


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly "
                               "for base64 data")
    # absl::Base64Unescape skips ASCII whitespace (Python's base64.encodebytes breaks lines).
    text = re.sub(r"[ \t\n\v\f\r]", "", value["b64"])
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _type_error(value, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_string(value)} Type: {type_string(value)} is "
                            f"not of expected type: {tensors.dtype_string(dtype)}")


def _scalar(value, dtype: int):
    """AddValueToTensor: one JSON leaf -> a Python value of dtype."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return decode_b64(value)
        raise _type_error(value, dtype)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
        if not is_number:
            raise _type_error(value, dtype)
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (is_number and isinstance(value, int) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       f"Conversion of JSON Value: {debug_string(value)} to type: "
                       f"{tensors.dtype_string(dtype)}")


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto: checks the nesting is dense and collects leaves."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {debug_string(value)} found at incorrect "
                                   f"level: {level + 1} in the JSON DOM. Expected at level: "
                                   f"{rank}")
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def to_array(value, dtype: int, name: str = "", *, max_dims: int = tensors.MAX_DIMS,
             ) -> np.ndarray:
    """A JSON value (scalar, nested lists, b64 objects) -> numpy array of dtype.

    Its size counts against the request's limits (tensors.reserve_bytes).
    """
    shape = _dense_shape(value)
    if len(shape) > max_dims:
        # rapidjson parses any depth (kParseIterativeFlag, json_tensor.cc ParseJson) and
        # TensorFlow takes up to 254 dims; numpy stops at 64, so refuse it here, clearly.
        raise invalid_argument(
            f"JSON Value nested {len(shape)} lists deep: input {name} would have "
            f"{len(shape) + tensors.MAX_DIMS - max_dims} dimensions, more than the "
            f"{tensors.MAX_DIMS} this server supports")
    np_type = tensors.numpy_dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    what = f"{tensors.dtype_string(dtype)} {_shape_string(shape)}"
    if np_type is not object:  # Strings are counted once decoded.
        tensors.reserve_bytes(name, count * np.dtype(np_type).itemsize, what)
    leaves: list = []
    _fill(value, 0, shape, dtype, leaves)
    if np_type is object:
        tensors.reserve_bytes(name, count * tensors.STRING_ELEMENT_BYTES
                              + sum(len(v) for v in leaves), what)
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    if dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT8):
        # int_val holds int32; narrower types wrap as the C++ cast does.
        return np.array(leaves, dtype=np.int64).astype(np_type).reshape(shape)
    return np.array(leaves, dtype=np_type).reshape(shape)


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def inputs_from_instances(instances: list, input_infos) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: row format -> one array per named input."""
    names = sorted(input_infos.keys())
    if not _is_element_object(instances[0]) and len(names) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    objects = _is_element_object(instances[0])
    for name in names:  # Every input's dimension 0 is the number of instances.
        tensors.check_batch(name, len(instances))
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}

    def add(item, name: str) -> None:
        if name not in input_infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        # Stacking the instances adds dimension 0.
        array = to_array(item, input_infos[name].dtype, name, max_dims=tensors.MAX_DIMS - 1)
        if name not in shapes:
            shapes[name] = list(array.shape)
        elif array.size != int(np.prod(shapes[name])):
            raise invalid_argument(f"Expecting tensor size: {int(np.prod(shapes[name]))} but "
                                   f"got: {array.size}")
        elif list(array.shape) != shapes[name]:
            raise invalid_argument(f"Expecting shape {_shape_string(shapes[name])} but got: "
                                   f"{_shape_string(list(array.shape))}")
        values.setdefault(name, []).append(array)

    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of "
                                       "input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as error:
                    raise invalid_argument(f"Failed to process element: {index} key: {name} of "
                                           f"'instances' list. Error: {error}") from None
            if set(element) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(names)}")
        else:
            if _is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} "
                                       "of input list")
            try:
                add(element, names[0])
            except ServingError as error:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' "
                                       f"list. Error: {error}") from None
    return {name: np.stack(arrays) for name, arrays in values.items()}


def _column(value, name: str, dtype: int) -> np.ndarray:
    shape = _dense_shape(value)
    if shape:
        tensors.check_batch(name, shape[0])
    return to_array(value, dtype, name)


def inputs_from_columns(inputs, input_infos) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: columnar format -> one array per named input."""
    names = sorted(input_infos.keys())
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        return {names[0]: _column(inputs, names[0], input_infos[names[0]].dtype)}
    arrays = {}
    for name in names:
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _column(inputs[name], name, input_infos[name].dtype)
    return arrays


def predict_inputs(doc: dict, input_infos) -> tuple[str, dict[str, np.ndarray]]:
    """FillPredictRequestFromJson after the signature is known: (format, arrays)."""
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Not formatted correctly "
                                   "expecting only one of 'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to "
                                   "be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} No values in 'instances' "
                                   "array")
        return ROW, inputs_from_instances(instances, input_infos)
    if "inputs" in doc:
        return COLUMNAR, inputs_from_columns(doc["inputs"], input_infos)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# --- Examples (classify / regress) ------------------------------------------------------

def _add_to_feature(value, name: str, feature) -> None:
    kind = feature.WhichOneof("kind")

    def check(expected: str) -> None:
        if kind not in (None, expected):
            label = {"bytes_list": "bytes", "float_list": "float",
                     "int64_list": "int64"}.get(kind, "UNKNOWN")
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting "
                                   f"type: {label}")

    if value is None or isinstance(value, list) or (isinstance(value, dict)
                                                    and not _is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                               f"{type_string(value)}")
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        check("bytes_list")
        feature.bytes_list.value.append(decode_b64(value))
    elif isinstance(value, str):
        check("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        check("float_list")
        feature.float_list.value.append(value)
    else:
        check("int64_list")
        if value >= 2 ** 63:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is "
                                   "supported.")
        feature.int64_list.value.append(value)


def example_from_json(value, example) -> None:
    """MakeExampleFromJsonObject: {"feature": value or [values]} -> tf.Example."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {type_string(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        feature.Clear()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)


def fill_example_request(doc: dict, request) -> None:
    """FillClassifyRegressRequestFromJson into a Classification/RegressionRequest."""
    sig = signature_name(doc)
    if sig:
        request.model_spec.signature_name = sig
    has_context = "context" in doc
    if has_context:
        example_from_json(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} When method is classify, key "
                               "'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to "
                               "be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} 'examples' value is an empty "
                               "array")
    tensors.check_batch("examples", len(examples))
    for value in examples:
        target = (request.input.example_list_with_context.examples.add() if has_context
                  else request.input.example_list.examples.add())
        example_from_json(value, target)


# --- Writing ----------------------------------------------------------------------------

def format_decimal(value: float, digits: int) -> str:
    """WriteDecimal: 6 significant digits if they round-trip, else max_digits10."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    parse = (lambda s: float(np.float32(s))) if digits == 9 else float
    if parse(text) != value:
        text = f"{value:.{digits}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _string_json(value: bytes, as_bytes: bool) -> str:
    if as_bytes:
        return '{"b64": "' + base64.b64encode(value).decode("ascii") + '"}'
    return json.dumps(value.decode("utf-8", "replace"), ensure_ascii=False)


def _leaf_writer(array: np.ndarray, as_bytes: bool):
    kind = array.dtype
    if kind == np.float32:
        return lambda v: format_decimal(float(v), 9)
    if kind == np.float64:
        return lambda v: format_decimal(float(v), 17)
    if kind == np.bool_:
        return lambda v: "true" if v else "false"
    if kind.kind in "OSU":
        return lambda v: _string_json(v if isinstance(v, bytes) else str(v).encode(), as_bytes)
    if kind.kind in "iu" and kind != np.uint16:
        return lambda v: str(int(v))
    names = {np.float16: "half", np.uint16: "uint16"}  # AddSingleValueAndAdvance refuses.
    raise invalid_argument("Failed to write JSON value for tensor type: "
                           f"{names.get(kind.type, kind.name)}")


def _write(value, leaf) -> str:
    if not isinstance(value, np.ndarray):
        return leaf(value)
    if value.ndim == 0:
        return leaf(value[()])
    if value.ndim == 1:
        items = value.tolist() if value.dtype != object else list(value)
        return "[" + ", ".join(leaf(v) for v in items) + "]"
    return "[" + ", ".join(_write(sub, leaf) for sub in value) + "]"


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    return name.endswith("_bytes") and (array.dtype == object or array.dtype.kind == "S")


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    writers = {n: _leaf_writer(outputs[n], _is_bytes_output(n, outputs[n])) for n in names}
    if fmt == COLUMNAR:
        if len(names) == 1:
            body = _write(outputs[names[0]], writers[names[0]])
        else:
            body = "{" + ", ".join(f"{json.dumps(n)}: {_write(outputs[n], writers[n])}"
                                   for n in names) + "}"
        return '{"outputs": ' + body + "}"
    batch = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows = []
    for i in range(batch):
        if len(names) == 1:
            rows.append(_write(outputs[names[0]][i], writers[names[0]]))
        else:
            rows.append("{" + ", ".join(f"{json.dumps(n)}: {_write(outputs[n][i], writers[n])}"
                                        for n in names) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def classify_response(result) -> str:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        items = [f"[{json.dumps(c.label, ensure_ascii=False)}, {format_decimal(c.score, 9)}]"
                 for c in classifications.classes]
        rows.append("[" + ", ".join(items) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regress_response(result) -> str:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(format_decimal(r.value, 9)
                                       for r in result.regressions) + "]}"


def error_body(message: str) -> str:
    """MakeJsonFromStatus: {"error": message} as rapidjson's PrettyWriter writes it (4-space
    indent, control characters as upper-case \\u00XX), the message bounded (errors.bounded)."""
    text = re.sub(r"(?<!\\)((?:\\\\)*)\\u00([0-9a-f]{2})",  # Escapes, not escaped text.
                  lambda m: m[1] + "\\u00" + m[2].upper(),
                  json.dumps(bounded(message), ensure_ascii=False))
    return '{\n    "error": ' + text + "\n}"
