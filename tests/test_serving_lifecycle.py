"""Model lifecycle on the local server: hot reload under traffic, broken and incomplete
versions, config-file reloads and labels, Prometheus metrics, timeouts, body limits, and
SIGTERM. These mutate model directories, so they skip when TFSERVING_ADDRESSES is set.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import grpc
import pytest
import requests
import support
import tensorflow as tf
from google.protobuf import text_format
from support import statuses, wait_for
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import conformance

pytestmark = pytest.mark.skipif(support.external_endpoint() is not None,
                                reason="mutates model directories: local server only")

REPO = pathlib.Path(__file__).resolve().parents[1]
RED = conformance.encode_png(conformance.COLOURS["red"])
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def versions(conformance_models) -> pathlib.Path:
    """The conformance model's two versions, to copy into each test's base path."""
    return conformance_models.parent / conformance.MODEL_NAME


def publish(source: pathlib.Path, base: pathlib.Path, version: int) -> None:
    """Copy, then rename: a version directory appears complete (export/ does the same)."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    os.rename(staging, base / str(version))


def blocked_in(thread: threading.Thread, function: str) -> bool:
    """Whether `thread` is blocked in a Condition.wait called (indirectly) by `function`."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return bool(names) and names[0] == "wait" and function in names


def predict_multi(rest: str, path: str = f"/v1/models/{conformance.MODEL_NAME}:predict"):
    return requests.post(rest + path, json={
        "signature_name": "multi", "instances": [{"x": [1.0, 1.0], "n": 0, "text": ""}]},
        timeout=30)


def write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


MONITORING = 'prometheus_config { enable: true path: "/metrics/prom" }\n'


def test_hot_reload_under_traffic_then_broken_and_incomplete_versions(versions, tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(MONITORING)
    with conformance.local_server(model_name="tiny", model_base_path=str(base),
                                  file_system_poll_wait_seconds=0.2, max_num_load_retries=3,
                                  monitoring_config_file=str(monitoring)) as (server, endpoint):
        channel = grpc.insecure_channel(endpoint.grpc)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tiny"))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([RED], dtype=tf.string))
        failures, served, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    served.append(stub.Predict(request, timeout=30).model_spec.version.value)
                except grpc.RpcError as error:
                    failures.append(error)

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: len(served) > 5, what="traffic on version 1")
            publish(versions / "2", base, 2)
            wait_for(lambda: statuses(endpoint.rest).get("1", {}).get("state") == "END",
                     what="version 2 to replace version 1")
            count = len(served)
            wait_for(lambda: len(served) > count + 5, what="traffic on version 2")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
            channel.close()
        assert failures == []
        assert served[0] == 1 and served[-1] == 2
        assert statuses(endpoint.rest)["2"]["state"] == "AVAILABLE"
        # Warmup replayed both records of version 2 before it served.
        assert server.metrics.model_warmup_records_read.value(str(base / "2"), "OK") == 2

        metrics = requests.get(endpoint.rest + "/metrics/prom", timeout=10)
        assert metrics.status_code == 200
        assert ':tensorflow:serving:request_count{model_name="tiny",status="OK"}' in \
            metrics.text
        assert "# TYPE :tensorflow:serving:request_latency histogram" in metrics.text
        assert ":tensorflow:serving:model_warmup_latency_bucket{" in metrics.text

        # A broken version never serves; version 2 keeps serving meanwhile.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"garbage, not a SavedModel")
        status = wait_for(lambda: statuses(endpoint.rest).get("3", {}).get("state") == "END"
                          and statuses(endpoint.rest)["3"], what="version 3 to fail")
        assert status["status"]["error_code"] == "DATA_LOSS"
        assert "saved_model.pb" in status["status"]["error_message"]
        assert statuses(endpoint.rest)["2"]["state"] == "AVAILABLE"
        response = predict_multi(endpoint.rest)
        assert response.status_code == 200 and response.json()["predictions"][0]["y"] == [
            3.0, 3.0]

        # A directory whose files arrive late is retried and then loads.
        (base / "4").mkdir()
        wait_for(lambda: server.metrics.load_attempt_count.value(str(base / "4"), "fail") >= 1,
                 what="a failed attempt on the empty directory")
        for item in (versions / "1").iterdir():
            target = base / "4" / item.name
            (shutil.copytree if item.is_dir() else shutil.copy)(item, target)
        wait_for(lambda: statuses(endpoint.rest).get("4", {}).get("state") == "AVAILABLE",
                 what="version 4 to load after its files arrived")
        wait_for(lambda: statuses(endpoint.rest)["2"]["state"] == "END",
                 what="version 2 to unload")
        assert predict_multi(endpoint.rest).json()["predictions"][0]["y"] == [2.0, 2.0]


CONFIG = """model_config_list {{ config {{
  name: "tiny" base_path: "{base}" model_platform: "tensorflow"
  model_version_policy {{ specific {{ {versions} }} }}
  {labels}
}} }}
"""


def config_text(base, versions, labels) -> str:
    return CONFIG.format(base=base, versions=" ".join(f"versions: {v}" for v in versions),
                         labels=" ".join(f'version_labels {{ key: "{k}" value: {v} }}'
                                         for k, v in labels.items()))


def test_config_file_reload_moves_versions_and_labels(versions, tmp_path, caplog):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    publish(versions / "2", base, 2)
    config = tmp_path / "models.config"
    write(config, config_text(base, [1], {"stable": 1}))
    with conformance.local_server(model_config_file=str(config),
                                  allow_version_labels_for_unavailable_models=True,
                                  model_config_file_poll_wait_seconds=0.2,
                                  file_system_poll_wait_seconds=0.2) as (_, endpoint):
        rest = endpoint.rest
        assert set(statuses(rest)) == {"1"}
        assert predict_multi(rest, "/v1/models/tiny/labels/stable:predict").status_code == 200

        write(config, config_text(base, [1, 2], {"stable": 1}))
        wait_for(lambda: statuses(rest).get("2", {}).get("state") == "AVAILABLE",
                 what="version 2 to load")
        write(config, config_text(base, [1, 2], {"stable": 1, "canary": 2}))
        wait_for(lambda: predict_multi(rest, "/v1/models/tiny/labels/canary:predict")
                 .status_code == 200, what="the canary label")
        assert predict_multi(rest, "/v1/models/tiny/labels/canary:predict").json()[
            "predictions"][0]["y"] == [3.0, 3.0]

        # A label may not move to a version that is not AVAILABLE: the edit is refused. The
        # server logs each refusal: once one is seen, the edit was read and did not apply.
        caplog.set_level(logging.INFO, logger="absl")
        caplog.clear()
        write(config, config_text(base, [1, 2], {"stable": 7, "canary": 2}))
        refusal = ("failed to ReloadConfig: FAILED_PRECONDITION: Request to assign label to "
                   "version 7 of model tiny")
        wait_for(lambda: any(refusal in record.getMessage() for record in list(caplog.records)),
                 what="the server to read and refuse the edit")
        assert predict_multi(rest, "/v1/models/tiny/labels/stable:predict").json()[
            "predictions"][0]["y"] == [2.0, 2.0]

        write(config, config_text(base, [2], {"stable": 2, "canary": 2}))
        wait_for(lambda: statuses(rest)["1"]["state"] == "END", what="version 1 to unload")
        assert predict_multi(rest, "/v1/models/tiny/labels/stable:predict").json()[
            "predictions"][0]["y"] == [3.0, 3.0]
        response = predict_multi(rest, "/v1/models/tiny/versions/1:predict")
        assert response.status_code == 404


def test_handle_reload_config_request(versions, tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    publish(versions / "2", base, 2)
    config = tmp_path / "models.config"
    write(config, config_text(base, [1], {}))
    with conformance.local_server(model_config_file=str(config)) as (_, endpoint):
        with grpc.insecure_channel(endpoint.grpc) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(config_text(base, [1, 2], {}), request.config)
            response = stub.HandleReloadConfigRequest(request, timeout=60)
            assert response.status.error_code == 0
            wait_for(lambda: statuses(endpoint.rest).get("2", {}).get("state") == "AVAILABLE",
                     what="version 2 after the reload")
            # Labels are checked before new versions load: a label moves in a later edit.
            request.config.Clear()
            text_format.Parse(config_text(base, [1, 2], {"canary": 2}), request.config)
            assert stub.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
            assert predict_multi(endpoint.rest, "/v1/models/tiny/labels/canary:predict").json()[
                "predictions"][0]["y"] == [3.0, 3.0]
            request.config.Clear()
            text_format.Parse(config_text(base, [1, 2], {"canary": 5}), request.config)
            with pytest.raises(grpc.RpcError) as info:
                stub.HandleReloadConfigRequest(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_labels_on_unloaded_versions_need_the_flag(versions, tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    config = tmp_path / "models.config"
    write(config, config_text(base, [1], {"stable": 1}))
    from serving import errors
    from serving import server as server_lib

    with pytest.raises(errors.ServingError, match="not currently available"):
        server_lib.Server(server_lib.ServerOptions(
            model_config_file=str(config), ephemeral_ports=True, host="127.0.0.1"))


def test_rest_timeout_and_body_limit(versions, tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    big = support.png_of_size(1200, 900)
    with conformance.local_server(model_name="tiny", model_base_path=str(base),
                                  rest_api_timeout_in_ms=1, max_body_bytes=200_000,
                                  enable_model_warmup=False) as (_, endpoint):
        import base64

        response = requests.post(endpoint.rest + "/v1/models/tiny:predict", json={
            "instances": [{"b64": base64.b64encode(big[:100_000]).decode()}]}, timeout=30)
        assert response.status_code == 504, response.text
        assert response.json()["error"].startswith("Deadline Exceeded")
        response = requests.post(endpoint.rest + "/v1/models/tiny:predict", json={
            "instances": [{"b64": base64.b64encode(big).decode()}]}, timeout=30)
        assert response.status_code == 413
        assert "limit" in response.json()["error"]
        # Unknown paths outside /v1 are plain 404s, as the real server's.
        assert requests.get(endpoint.rest + "/nope", timeout=10).status_code == 404


def test_sigterm_finishes_and_exits_zero(versions, tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    # python -m serving has TF Serving's flags, where port 0 means no server: ports up front.
    grpc_port, rest_port = support.free_port(), support.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=tiny", f"--model_base_path={base}", "--host=127.0.0.1",
         "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    rest = f"http://127.0.0.1:{rest_port}"
    try:
        def ready():
            if process.poll() is not None:
                raise AssertionError(process.stdout.read())
            try:
                return requests.get(f"{rest}/v1/models/tiny", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=90, what="the server subprocess")
        assert predict_multi(rest).status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "Successfully loaded servable version {name: tiny version: 1}" in output
    assert "Finished reading warmup data for model at" in output
    assert "Could not set TensorFlow thread pools" not in output  # Applied before TF ran.


def test_stop_lets_requests_in_flight_finish(versions, tmp_path, monkeypatch, caplog):
    from serving.servable import Servable

    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 0 } "
                      "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 }")
    # The model runs only once the test opens the gate: the requests are surely in flight
    # (inside the batch thread, or queued behind it) when the server is told to stop.
    gate, entered = threading.Event(), threading.Event()
    real_run = Servable.run

    def gated_run(self, *args, **kwargs):
        entered.set()
        assert gate.wait(120), "the test never opened the gate"
        return real_run(self, *args, **kwargs)

    caplog.set_level(logging.INFO, logger="absl")
    with conformance.local_server(model_name="tiny", model_base_path=str(base),
                                  enable_batching=True, batching_parameters_file=str(params),
                                  enable_model_warmup=False) as (server, endpoint):
        monkeypatch.setattr(Servable, "run", gated_run)
        channel = grpc.insecure_channel(endpoint.grpc)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tiny"))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([RED], dtype=tf.string))
        results = {}

        def grpc_call():
            results["grpc"] = stub.Predict(request, timeout=120).model_spec.version.value

        def rest_call():
            results["rest"] = predict_multi(endpoint.rest).status_code

        threads = [threading.Thread(target=grpc_call), threading.Thread(target=rest_call)]
        for thread in threads:
            thread.start()
        # Both requests reached the batcher, and the model holds the first batch.
        wait_for(lambda: server.metrics.input_batch_size.count() == 2 and entered.is_set(),
                 what="both requests in flight")
        # A grace far longer than the generous wait below: a stop that sat the grace out
        # instead of returning once the requests finished would fail the test.
        stopping = threading.Thread(target=server.stop, kwargs={"grace": 600})
        stopping.start()
        wait_for(lambda: any("Shutting down the model server" in record.getMessage()
                             for record in list(caplog.records)), what="the stop to begin")
        assert results == {}  # Nothing answered yet: both are in flight while stopping.
        gate.set()
        for thread in threads:
            thread.join(120)
        stopping.join(120)
        assert not stopping.is_alive(), "stop() still waits after its requests finished"
        channel.close()
        assert results == {"grpc": 1, "rest": 200}
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{endpoint.rest}/v1/models/tiny", timeout=5)


def test_unload_waits_for_requests_in_flight(versions, tmp_path):
    import numpy as np

    from serving import config as config_lib
    from serving.manager import ModelManager

    base = tmp_path / "tiny"
    base.mkdir()
    publish(versions / "1", base, 1)
    manager = ModelManager(model_config=config_lib.single_model_config("tiny", str(base)),
                           file_system_poll_wait_seconds=0)
    manager.start()
    spec = model_pb2.ModelSpec(name="tiny")

    def state(version):
        status = manager.model_status(model_pb2.ModelSpec(name="tiny"))
        return {s.version: s.state for s in status.model_version_status}.get(version)

    try:
        with manager.servable(spec) as servable:
            publish(versions / "2", base, 2)
            poll = threading.Thread(target=manager.poll)
            poll.start()
            wait_for(lambda: state(1) == State.UNLOADING, what="version 1 to start unloading")
            # The unloader is parked on its wait for requests in flight (its stack shows it),
            # so the state below is the settled one, not a moment before it moves on.
            wait_for(lambda: blocked_in(poll, "_unload"), what="the unload to wait")
            assert state(1) == State.UNLOADING  # Held by this request...
            outputs = servable.run("multi", {"x": np.ones((1, 2), np.float32),
                                             "n": np.zeros(1, np.int64),
                                             "text": np.array([b""], dtype=object)})
            assert outputs["y"].tolist() == [[2.0, 2.0]]  # ...which still runs on it.
            with manager.servable(spec) as newer:
                assert newer.version == 2  # New requests already go to version 2.
        poll.join(30)
        assert state(1) == State.END and state(2) == State.AVAILABLE
    finally:
        manager.stop()


def test_start_fails_when_no_version_can_load(tmp_path):
    from serving import errors
    from serving import server as server_lib

    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "saved_model.pb").write_bytes(b"not a proto")
    server = server_lib.Server(server_lib.ServerOptions(
        model_name="tiny", model_base_path=str(tmp_path / "tiny"), ephemeral_ports=True,
        host="127.0.0.1", max_num_load_retries=0, file_system_poll_wait_seconds=0))
    with pytest.raises(errors.ServingError) as info:
        server.start()
    server.stop()
    assert info.value.message.startswith(
        "1 model(s) did not become available: {{{name: tiny version: 1} due to error: "
        "DATA_LOSS: Can't parse")
