"""Pieces of the local server that need no server: JSON codec, configs, metrics, policies."""

from __future__ import annotations

import json
import pathlib

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import config, errors, manager, metrics, rest_json, server, tensors

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "serving" / "config"


@pytest.mark.parametrize("value, digits, text", [
    (float(np.float32(0.2)), 9, "0.2"),
    (float(np.float32(2 / 3)), 9, "0.666666687"),
    (4.0, 9, "4.0"),
    (2e7, 9, "2e+07"),
    (3e-05, 9, "3e-05"),
    (1 / 3, 17, "0.33333333333333331"),
    (0.5, 17, "0.5"),
    (float("nan"), 9, "NaN"),
    (float("-inf"), 9, "-Infinity"),
])
def test_write_decimal_matches_json_tensor(value, digits, text):
    assert rest_json.format_decimal(value, digits) == text


def test_row_and_columnar_writers():
    outputs = {"a_bytes": np.array([b"\x00", b"x"], dtype=object),
               "s": np.array([b"hi", b"yo"], dtype=object),
               "v": np.array([[1, 2], [3, 4]], np.int64)}
    row = json.loads(rest_json.predict_response(outputs, rest_json.ROW))
    assert row == {"predictions": [{"a_bytes": {"b64": "AA=="}, "s": "hi", "v": [1, 2]},
                                   {"a_bytes": {"b64": "eA=="}, "s": "yo", "v": [3, 4]}]}
    single = json.loads(rest_json.predict_response({"v": outputs["v"]}, rest_json.COLUMNAR))
    assert single == {"outputs": [[1, 2], [3, 4]]}
    assert json.loads(rest_json.predict_response({"v": outputs["v"]}, rest_json.ROW)) == {
        "predictions": [[1, 2], [3, 4]]}


def info(dtype: int) -> meta_graph_pb2.TensorInfo:
    """A SignatureDef input as the server holds it (the real proto)."""
    return meta_graph_pb2.TensorInfo(dtype=dtype)


def test_json_parsing_rules():
    infos = {"x": info(types_pb2.DT_FLOAT)}
    kind, arrays = rest_json.predict_inputs({"instances": [[1, 2], [3, 4.5]]}, infos)
    assert kind == rest_json.ROW and arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["x"], [[1, 2], [3, 4.5]])
    with pytest.raises(errors.ServingError, match="Expecting shape"):
        rest_json.predict_inputs({"instances": [[1, 2], [[3], [4]]]}, infos)
    with pytest.raises(errors.ServingError, match="is not of expected type: int32"):
        rest_json.to_array([1.5], types_pb2.DT_INT32)
    with pytest.raises(errors.ServingError, match="is not of expected type: bool"):
        rest_json.to_array([1], types_pb2.DT_BOOL)
    assert rest_json.to_array({"b64": "aGk"}, types_pb2.DT_STRING).item() == b"hi"
    assert rest_json.parse_json('{"a": 1} trailing') == {"a": 1}


# ParseJson's messages are rapidjson's (GetParseError_En) with its offsets.
@pytest.mark.parametrize("body, message", [
    ("", "JSON Parse error: The document is empty"),
    ("   ", "JSON Parse error: The document is empty. at offset: 3"),
    ('{"a": 1,}', "JSON Parse error: Missing a name for object member. at offset: 8"),
    ("{a: 1}", "JSON Parse error: Missing a name for object member. at offset: 1"),
    ('{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    ('{"a": [1 2]}',
     "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
    ('{"a": [1, {"b": 2} 3]}',
     "JSON Parse error: Missing a comma or ']' after an array element. at offset: 19"),
    ('{"a": 1 "b": 2}',
     "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
    ('{"a": "x', "JSON Parse error: Missing a closing quotation mark in string. at offset: 8"),
    ('{"a": tru}', "JSON Parse error: Invalid value. at offset: 6"),
    ('{"a": "\\q"}', "JSON Parse error: Invalid escape character in string. at offset: 7"),
    ('{"a": "\\uZZZZ"}',
     "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 8"),
    ('{"a": "\x01"}', "JSON Parse error: Invalid encoding in string. at offset: 7"),
    ("[1, 2]", "JSON Value: [1,2] Is not object"),
    ('"text"', 'JSON Value: "text" Is not object'),
])
def test_json_parse_errors_follow_rapidjson(body, message):
    with pytest.raises(errors.ServingError) as raised:
        rest_json.parse_json(body)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message


TWO_INPUTS = {"a": info(types_pb2.DT_FLOAT), "b": info(types_pb2.DT_STRING)}
ONE_INPUT = {"x": info(types_pb2.DT_INT64)}


@pytest.mark.parametrize("doc, infos, message", [
    ({"instances": [1, 2], "inputs": [1]}, ONE_INPUT,
     """JSON Value: {"instances":[1,2],"inputs":[1]} Not formatted correctly expecting only """
     "one of 'inputs' or 'instances' keys to exist "),
    ({"instances": {"x": 1}}, ONE_INPUT,
     """JSON Value: {"instances":{"x":1}} Expecting 'instances' to be an list/array"""),
    ({"instances": []}, ONE_INPUT, """JSON Value: {"instances":[]} No values in 'instances' """
                                   "array"),
    ({}, ONE_INPUT, "Missing 'inputs' or 'instances' key"),
    ({"instances": [1, 2]}, TWO_INPUTS, "instances is a plain list, but expecting list of "
     "objects as multiple input tensors required as per tensorinfo_map"),
    ({"instances": [{"a": 1.0, "b": "s"}, [1]]}, TWO_INPUTS,
     "Expecting object but got list at item 1 of input list"),
    ({"instances": [{"a": 1.0, "b": "s"}, {"a": 2.0}]}, TWO_INPUTS,
     """Failed to process element: 1 of 'instances' list. JSON object: {"a":2.0} keys must """
     "be equal to: a,b"),
    ({"instances": [{"a": 1.0, "b": "s", "c": 1}]}, TWO_INPUTS,
     "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON "
     "object: does not have named input: c"),
    ({"instances": [1, {"x": 1}]}, ONE_INPUT,
     "Expecting value/list but got object at item 1 of input list"),
    ({"instances": [[1, 2], [3]]}, ONE_INPUT, "Failed to process element: 1 of 'instances' "
     "list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"),
    ({"instances": [[1, 2], [[3, 4]]]}, ONE_INPUT, "Failed to process element: 1 of "
     "'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [1,2]"),
    ({"instances": [1.5]}, ONE_INPUT, "Failed to process element: 0 of 'instances' list. "
     "Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: Number is not of expected type: int64"),
    ({"inputs": [1, 2]}, TWO_INPUTS, "inputs is a plain value/list, but expecting an object "
     "as multiple input tensors required as per tensorinfo_map"),
    ({"inputs": {"a": [1.0]}}, TWO_INPUTS, "Missing named input: b in 'inputs' object."),
    ({"signature_name": 3, "inputs": [1]}, ONE_INPUT,
     """JSON Value: {"signature_name":3,"inputs":[1]} not formatted correctly. """
     "'signature_name' key must be a string value."),
])
def test_predict_request_errors_keep_json_tensor_wording(doc, infos, message):
    with pytest.raises(errors.ServingError) as raised:
        rest_json.signature_name(doc)
        rest_json.predict_inputs(doc, infos)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message


def test_row_and_columnar_requests_give_the_same_arrays():
    row = {"instances": [{"a": [1.0, 2.0], "b": {"b64": "aGk="}}, {"a": [3.0, 4.5], "b": "yo"}]}
    columnar = {"inputs": {"a": [[1.0, 2.0], [3.0, 4.5]], "b": [{"b64": "aGk="}, "yo"]}}
    for doc, kind in ((row, rest_json.ROW), (columnar, rest_json.COLUMNAR)):
        assert rest_json.signature_name(doc) == ""
        got_kind, arrays = rest_json.predict_inputs(doc, TWO_INPUTS)
        assert got_kind == kind and set(arrays) == {"a", "b"}
        assert arrays["a"].dtype == np.float32 and arrays["a"].tolist() == [[1, 2], [3, 4.5]]
        assert arrays["b"].dtype == object and arrays["b"].tolist() == [b"hi", b"yo"]
    # One input: a bare (even b64) value is its whole column.
    kind, arrays = rest_json.predict_inputs({"inputs": {"b64": "aGk="}},
                                            {"s": info(types_pb2.DT_STRING)})
    assert kind == rest_json.COLUMNAR and arrays["s"].item() == b"hi"
    assert rest_json.signature_name({"signature_name": "multi"}) == "multi"


def test_b64_values_and_undecodable_bodies():
    assert rest_json.decode_b64({"b64": "aG k=\n"}) == b"hi"  # Whitespace skipped, as absl.
    with pytest.raises(errors.ServingError) as raised:
        rest_json.decode_b64({"b64": "a*b="})
    assert raised.value.message == "Unable to base64 decode"
    for value, text in (({"b64": 1}, '{"b64":1}'), ({"b64": "aGk", "x": 1}, '{"b64":"aGk","x":1}')):
        with pytest.raises(errors.ServingError) as raised:
            rest_json.decode_b64(value)
        assert raised.value.message == \
            f"JSON Value: {text} not formatted correctly for base64 data"
    assert rest_json.parse_json(b'{"a": "\xff"}') == {"a": "\ufffd"}  # Bad UTF-8 replaced.
    assert rest_json.parse_json(" \t\r\n{}") == {}
    with pytest.raises(errors.ServingError) as raised:
        rest_json.parse_json('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert raised.value.message == "JSON Parse error: nesting too deep"


def test_every_output_type_is_written_as_json_tensor_writes_it():
    outputs = {"f": np.array([0.2, 1 / 3, 2.0], np.float32),
               "d": np.array([0.1, 1 / 3, 3.0]),
               "b": np.array([True, False, True]),
               "s_bytes": np.array([b"\xff", b"a", b""], dtype=object),
               "s": np.array([b'x"y', "é".encode(), b""], dtype=object),
               "i": np.array([1, -2, 3], np.int32)}
    assert rest_json.predict_response(outputs, rest_json.COLUMNAR) == (
        '{"outputs": {"b": [true, false, true], "d": [0.1, 0.33333333333333331, 3.0], '
        '"f": [0.2, 0.333333343, 2.0], "i": [1, -2, 3], "s": ["x\\"y", "é", ""], '
        '"s_bytes": [{"b64": "/w=="}, {"b64": "YQ=="}, {"b64": ""}]}}')
    assert json.loads(rest_json.predict_response(outputs, rest_json.ROW))["predictions"][1] == {
        "b": False, "d": 1 / 3, "f": 0.333333343, "i": -2, "s": "é", "s_bytes": {"b64": "YQ=="}}


def test_json_value_descriptions():
    assert [rest_json.type_string(v) for v in (None, True, False, {}, [], "s", 1, 1.5)] == [
        "Null", "True", "False", "Object", "Array", "String", "Number", "Number"]
    assert rest_json.debug_string({"a": [1, 2], "b": "x"}) == '{"a":[1,2],"b":"x"}'
    assert rest_json.debug_string(list(range(500)), 20) == "[0,1,2,3,4,5,6,7,8,9...(cut)"
    assert rest_json.debug_string(list(range(5)), 11) == "[0,1,2,3,4]"  # Fits exactly.
    assert json.loads(rest_json.error_body('bad "x"\n')) == {"error": 'bad "x"\n'}


def test_http_status_mapping_follows_http_server_cc():
    assert errors.http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert errors.http_status(grpc.StatusCode.NOT_FOUND) == 404
    assert errors.http_status(grpc.StatusCode.FAILED_PRECONDITION) == 400
    assert errors.http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert errors.http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    assert errors.http_status(grpc.StatusCode.UNIMPLEMENTED) == 501
    assert errors.http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert errors.http_status(grpc.StatusCode.INTERNAL) == 500


def test_op_errors_keep_code_and_message():
    import tensorflow as tf

    error = errors.ServingError.from_exception(
        tf.errors.InvalidArgumentError(None, None, "Graph execution error:\n\nbad [Op:Foo]"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.message == "bad"


def test_tensor_protos_use_typed_fields():
    proto = tensors.to_proto(np.array([[1.5, 2.0]], np.float32))
    assert list(proto.float_val) == [1.5, 2.0] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [1, 2]
    assert list(tensors.to_proto(np.array([b"a"], dtype=object)).string_val) == [b"a"]
    assert tensors.dtype_string(types_pb2.DT_FLOAT) == "float"
    assert tensors.dtype_string(types_pb2.DT_INT64) == "int64"


@pytest.mark.parametrize("name, expected", [
    ("batching_parameters.txt", config.BatchingOptions(
        max_batch_size=128, batch_timeout_micros=2000, max_enqueued_batches=8,
        num_batch_threads=8, allowed_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128))),
    ("batching_parameters_cpu.txt", config.BatchingOptions(
        max_batch_size=32, batch_timeout_micros=0, max_enqueued_batches=4,
        num_batch_threads=4, allowed_batch_sizes=())),
])
def test_repo_batching_files_resolve(name, expected):
    # Every field, as the files state them (the comments there say why these numbers).
    assert config.BatchingOptions.from_file(str(CONFIG / name)) == expected


# tensorflow/serving at 9d981c5c2708d23c5407c7c1e30309e6f9798874 (read with `git show
# HEAD:<file>` in a clone): (name, number, type, label) of every field, with the line.
_I64, _STR, _BOOL = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                     ".google.protobuf.BoolValue")
UPSTREAM_BATCHING_PARAMETERS = [  # servables/tensorflow/session_bundle_config.proto
    ("max_batch_size", 1, _I64, "optional"),  # line 158
    ("batch_timeout_micros", 2, _I64, "optional"),  # line 164
    ("max_enqueued_batches", 3, _I64, "optional"),  # line 169
    ("num_batch_threads", 4, _I64, "optional"),  # line 173
    ("thread_pool_name", 5, _STR, "optional"),  # line 176
    ("enable_large_batch_splitting", 8, _BOOL, "optional"),  # line 181
    ("max_execution_batch_size", 9, _I64, "optional"),  # line 190
    ("allowed_batch_sizes", 6, "int64", "repeated"),  # line 199
    ("pad_variable_length_inputs", 7, "bool", "optional"),  # line 202
]
UPSTREAM_MONITORING = {  # config/monitoring_config.proto
    "PrometheusConfig": [("enable", 1, "bool", "optional"),  # line 9
                         ("path", 2, "string", "optional")],  # line 13
    "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig",
                          "optional")],  # line 18
}


def _fields(message_name: str) -> list[tuple]:
    from google.protobuf import descriptor

    names = {descriptor.FieldDescriptor.TYPE_INT64: "int64",
             descriptor.FieldDescriptor.TYPE_BOOL: "bool",
             descriptor.FieldDescriptor.TYPE_STRING: "string"}
    fields = []
    for field in config.new_message(message_name).DESCRIPTOR.fields:
        kind = ("." + field.message_type.full_name if field.message_type is not None
                else names[field.type])
        label = "repeated" if field.is_repeated else "optional"
        fields.append((field.name, field.number, kind, label))
    return fields


def test_hand_built_descriptors_match_the_upstream_protos():
    """serving/config.py builds these messages itself (tensorflow-serving-api does not ship
    them): same package, names, numbers, types and labels as TF Serving's .proto files, or a
    file the real server reads would parse differently here."""
    assert config.new_message("BatchingParameters").DESCRIPTOR.full_name == \
        "tensorflow.serving.BatchingParameters"
    assert sorted(_fields("BatchingParameters")) == sorted(UPSTREAM_BATCHING_PARAMETERS)
    for name, fields in UPSTREAM_MONITORING.items():
        assert config.new_message(name).DESCRIPTOR.full_name == f"tensorflow.serving.{name}"
        assert _fields(name) == fields
    # proto3 wrappers keep "unset" apart from 0, which BatchingOptions relies on.
    params = config.parse_batching_parameters("batch_timeout_micros { value: 0 }")
    assert params.HasField("batch_timeout_micros") and not params.HasField("max_batch_size")


def test_batching_defaults_and_rejections():
    assert config.BatchingOptions.from_proto(config.parse_batching_parameters("")) \
        .max_batch_size == config.DEFAULT_MAX_BATCH_SIZE
    with pytest.raises(ValueError, match="max_batch_size"):
        config.BatchingOptions.from_proto(config.parse_batching_parameters(
            "max_batch_size { value: 8 } allowed_batch_sizes: 4"))
    with pytest.raises(text_format.ParseError):
        config.parse_batching_parameters("max_batch_size: 8")  # Wrappers are required.


def test_monitoring_path():
    assert config.read_prometheus_path(str(CONFIG / "monitoring.config")) == \
        "/monitoring/prometheus/metrics"
    assert config.read_prometheus_path(None) is None


def test_model_config_validation():
    bad = text_format.Parse('model_config_list { config { name: "a" base_path: "/x" } '
                            'config { name: "a" base_path: "/y" } }',
                            model_server_config_pb2.ModelServerConfig())
    with pytest.raises(ValueError, match="multiple times"):
        config.validate_model_server_config(bad)
    labels = text_format.Parse('model_config_list { config { name: "a" base_path: "/x" '
                               'version_labels { key: "bad-label" value: 1 } } }',
                               model_server_config_pb2.ModelServerConfig())
    with pytest.raises(ValueError, match="Invalid label"):
        config.validate_model_server_config(labels)


def test_version_policies():
    policy = model_server_config_pb2.ModelServerConfig().model_config_list.config.add() \
        .model_version_policy
    assert manager.aspired_versions(policy, [1, 2, 3]) == {3}
    policy.latest.num_versions = 2
    assert manager.aspired_versions(policy, [1, 2, 3]) == {2, 3}
    policy.all.SetInParent()
    assert manager.aspired_versions(policy, [1, 2, 3]) == {1, 2, 3}
    policy.specific.versions.extend([1, 5])
    assert manager.aspired_versions(policy, [1, 2, 3]) == {1}


def test_prometheus_text_format():
    registry = metrics.Metrics()
    registry.request_count.inc("m", "OK")
    registry.request_latency.observe("m", "predict", "REST", value=15)
    text = registry.render()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
    assert (':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",'
            'entrypoint="REST",le="10"} 0') in text
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="predict",' \
           'entrypoint="REST"} 1' in text


def test_server_options_refuse_what_the_binary_refuses():
    with pytest.raises(ValueError, match="empty"):
        server.ServerOptions().validated()
    with pytest.raises(ValueError, match="without setting"):
        server.ServerOptions(model_base_path="/m", batching_parameters_file="/b").validated()
    with pytest.raises(ValueError, match="grpc_port"):
        server.ServerOptions(model_base_path="/m", port=0).validated()


def test_grpc_channel_arguments():
    from serving.grpc_service import parse_channel_arguments

    assert parse_channel_arguments("grpc.max_connection_age_ms=2000, grpc.lb_policy_name=x") \
        == [("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "x")]
    assert parse_channel_arguments("") == []
    with pytest.raises(ValueError):
        parse_channel_arguments("novalue")


def test_serving_never_imports_train_or_export():
    import ast

    for path in sorted((CONFIG.parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"train", "export", "clients"}, (path, name)


def test_narrow_ints_wrap_and_half_outputs_are_refused():
    assert rest_json.to_array([300, -1], types_pb2.DT_UINT8).tolist() == [44, 255]
    with pytest.raises(errors.ServingError, match="tensor type: half"):
        rest_json.predict_response({"h": np.ones(2, np.float16)}, rest_json.ROW)
