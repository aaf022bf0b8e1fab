"""Server-side batching: the Batcher's rules, and concurrent requests merged by the server."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest
import support
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import conformance
from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import ServingError


def options(**kwargs) -> BatchingOptions:
    defaults = dict(max_batch_size=8, batch_timeout_micros=50_000, max_enqueued_batches=4,
                    num_batch_threads=1)
    defaults.update(kwargs)
    return BatchingOptions(**defaults)


class Recorder:
    """A fake signature: doubles x, remembers every batch it ran; with a gate, each call
    signals `entered` and then waits for the gate."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.timeouts: list[float | None] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, inputs, timeout):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(60)
        self.batches.append(len(inputs["x"]))
        self.timeouts.append(timeout)
        return {"y": inputs["x"] * 2, "ids": np.arange(len(inputs["x"]))}


def test_concurrent_tasks_merge_and_split_back():
    run = Recorder()
    # The batch closes when full (3 tasks of 2), never on the clock: a timeout of a minute
    # would only show if the tasks were not merged.
    batcher = Batcher(run, options(max_batch_size=6, batch_timeout_micros=60_000_000))
    try:
        futures = [batcher.submit({"x": np.full((2, 3), i, np.float32)}) for i in range(3)]
        results = [f.result(10) for f in futures]
    finally:
        batcher.stop()
    assert run.batches == [6]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((2, 3), 2 * i, np.float32))
        np.testing.assert_array_equal(result["ids"], [2 * i, 2 * i + 1])


def test_padding_to_allowed_batch_sizes_is_cut_off():
    run = Recorder()
    batcher = Batcher(run, options(allowed_batch_sizes=(2, 4, 8)))
    try:
        result = batcher.submit({"x": np.ones((3, 1), np.float32)}).result(10)
    finally:
        batcher.stop()
    assert run.batches == [4]
    assert result["y"].shape == (3, 1)


def test_a_task_over_max_batch_size_is_invalid():
    batcher = Batcher(Recorder(), options(max_batch_size=4))
    try:
        with pytest.raises(ServingError) as info:
            batcher.submit({"x": np.ones((5, 1), np.float32)})
    finally:
        batcher.stop()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than maximum input batch size 4" in info.value.message


def test_full_queue_is_unavailable():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, options(max_batch_size=2, max_enqueued_batches=1,
                                   batch_timeout_micros=0))
    try:
        first = batcher.submit({"x": np.ones((2, 1), np.float32)})
        # Taken off the queue: the batch thread is inside the (gated) signature call.
        assert run.entered.wait(60) and first.running()
        queued = batcher.submit({"x": np.ones((2, 1), np.float32)})  # Waits in the queue.
        with pytest.raises(ServingError) as info:
            batcher.submit({"x": np.ones((2, 1), np.float32)})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        gate.set()
        assert first.result(10)["y"].shape == (2, 1)
        assert queued.result(10)["y"].shape == (2, 1)
    finally:
        gate.set()
        batcher.stop()


def test_inputs_must_share_dim_0():
    batcher = Batcher(Recorder(), options())
    try:
        with pytest.raises(ServingError, match="equal 0th-dimension size"):
            batcher.submit({"x": np.ones((2, 1)), "z": np.ones((3, 1))})
    finally:
        batcher.stop()


def test_incompatible_shapes_go_to_separate_batches():
    run = Recorder()
    batcher = Batcher(run, options())
    try:
        a = batcher.submit({"x": np.ones((1, 2), np.float32)})
        b = batcher.submit({"x": np.ones((1, 3), np.float32)})
        assert a.result(10)["y"].shape == (1, 2) and b.result(10)["y"].shape == (1, 3)
    finally:
        batcher.stop()
    assert sorted(run.batches) == [1, 1]


def test_server_merges_concurrent_requests(tmp_path_factory, tmp_path):
    if support.external_endpoint() is not None:
        pytest.skip("needs a server started with a known batching configuration")
    config = support.cached_conformance_models(
        tmp_path_factory.getbasetemp() / "serving-conformance")
    params = tmp_path / "batching.txt"
    # The batch closes when it is full (8 requests of one row), never on the clock: were
    # the requests not merged, they would wait the minute out and miss their deadlines.
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 60000000 } "
                      "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 } "
                      "allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    with conformance.local_server(model_config_file=str(config), enable_batching=True,
                                  batching_parameters_file=str(params),
                                  allow_version_labels_for_unavailable_models=True,
                                  enable_model_warmup=False,
                                  grpc_max_threads=16) as (server, endpoint):  # 8 wait at once.
        channel = grpc.insecure_channel(endpoint.grpc)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(i):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
                name=conformance.MODEL_NAME, signature_name="multi"))
            request.model_spec.version.value = 1
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[i, i]], dtype=tf.float32))
            request.inputs["n"].CopyFrom(tf.make_tensor_proto([i], dtype=tf.int64))
            request.inputs["text"].CopyFrom(tf.make_tensor_proto([str(i).encode()]))
            response = stub.Predict(request, timeout=30)
            return (tf.make_ndarray(response.outputs["y"]), tf.make_ndarray(
                response.outputs["n_plus_one"]), tf.make_ndarray(response.outputs["upper"]))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        for i, (y, n, text) in enumerate(results):
            np.testing.assert_array_equal(y, [[2 * i, 2 * i]])
            np.testing.assert_array_equal(n, [i + 1])
            assert text.tolist() == [str(i).encode()]
        assert server.metrics.input_batch_size.count() == 8
        assert server.metrics.processed_batch_size.count() == 1  # One batch of all eight.
        assert server.metrics.wrapped_run_count.value() == 1
        assert server.metrics.padding_size.count("8") == 1

        too_big = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=conformance.MODEL_NAME, signature_name="predict_images"))
        too_big.inputs["images"].CopyFrom(tf.make_tensor_proto(
            np.zeros((9, conformance.SIZE, conformance.SIZE, 3), np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(too_big, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Task size 9 is larger than maximum input batch size 8" in info.value.details()
        channel.close()


def test_cancelled_tasks_are_left_out_of_their_batch():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, options(batch_timeout_micros=0))
    try:
        # The batch thread is busy with another batch (of another shape) meanwhile, so the
        # two tasks below surely wait in the queue, in one batch.
        busy = batcher.submit({"x": np.ones((1, 5), np.float32)})
        assert run.entered.wait(60)
        gone = batcher.submit({"x": np.ones((3, 1), np.float32)})
        kept = batcher.submit({"x": np.ones((2, 1), np.float32)})
        assert gone.cancel()  # Its caller's deadline passed while it was queued.
        gate.set()
        assert kept.result(60)["y"].shape == (2, 1)
        assert busy.result(60)["y"].shape == (1, 5)
    finally:
        gate.set()
        batcher.stop()
    assert run.batches == [1, 2]


def test_batches_run_with_their_latest_deadline_and_expired_tasks_are_left_out():
    """batching_session.cc ProcessBatch: the batch's timeout is its tasks' latest deadline;
    a task already past its deadline fails and is not run."""
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, options(batch_timeout_micros=0))
    try:
        now = time.monotonic()
        # While the thread is held in a first batch (no deadline), two tasks with deadlines
        # queue up together in the next batch.
        busy = batcher.submit({"x": np.ones((1, 3), np.float32)})
        assert run.entered.wait(60)
        early = batcher.submit({"x": np.ones((1, 1), np.float32)}, deadline=now + 500)
        late = batcher.submit({"x": np.ones((1, 1), np.float32)}, deadline=now + 1000)
        gate.set()
        for future in (busy, early, late):
            assert future.result(60)["y"].shape[0] == 1
        with pytest.raises(ServingError) as info:
            batcher.submit({"x": np.ones((1, 1), np.float32)}, deadline=now - 1).result(60)
    finally:
        gate.set()
        batcher.stop()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.message == "Run() timeout exceeded while waiting in batching queue"
    assert run.batches == [1, 2]  # The expired task never ran.
    # No deadline: no timeout. Two deadlines: the later one (a generous margin, no clock).
    assert run.timeouts[0] is None and 500 < run.timeouts[1] <= 1000


def test_deadline_while_queued_is_deadline_exceeded():
    from serving.deadlines import remaining, request_deadline

    with request_deadline(0.05):
        time.sleep(0.06)
        with pytest.raises(ServingError) as info:
            remaining()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with request_deadline(None):
        assert remaining() is None


def test_per_model_batching_parameters(tmp_path_factory, tmp_path):
    if support.external_endpoint() is not None:
        pytest.skip("needs a server started with a known batching configuration")
    import shutil

    versions = tmp_path_factory.getbasetemp() / "serving-conformance"
    support.cached_conformance_models(versions)
    base = tmp_path / "tiny"
    shutil.copytree(versions / conformance.MODEL_NAME / "1", base / "1")
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }")
    with conformance.local_server(model_name="tiny", model_base_path=str(base),
                                  enable_batching=True, enable_per_model_batching_parameters=True,
                                  ) as (_, endpoint):
        with grpc.insecure_channel(endpoint.grpc) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
                name="tiny", signature_name="predict_images"))
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(
                np.zeros((3, conformance.SIZE, conformance.SIZE, 3), np.float32)))
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=30)
    assert "Task size 3 is larger than maximum input batch size 2" in info.value.details()
