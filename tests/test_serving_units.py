"""Pieces of the local server that need no server: JSON codec, configs, metrics, policies."""

from __future__ import annotations

import json
import pathlib

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
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


def test_json_parsing_rules():
    class Info:  # Only .dtype of a TensorInfo is read.
        def __init__(self, dtype):
            self.dtype = dtype

    infos = {"x": Info(types_pb2.DT_FLOAT)}
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


@pytest.mark.parametrize("name", ["batching_parameters.txt", "batching_parameters_cpu.txt"])
def test_repo_batching_files_resolve(name):
    options = config.BatchingOptions.from_file(str(CONFIG / name))
    assert options.max_batch_size >= 1 and options.num_batch_threads >= 1
    if options.allowed_batch_sizes:
        assert options.allowed_batch_sizes[-1] == options.max_batch_size


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
