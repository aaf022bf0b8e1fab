"""What the hostile-input limits save: each attack against a hardened and an unlimited server.

    python -m bench.hostile
    python -m bench.hostile --json=hostile.json

Side by side in one run: one small classifier (GlobalAveragePooling + Dense at 32 px; the
cost of these attacks is all in decoding and tensor parsing) exported twice with
export.signatures, with the default limits (--max_pixels 50 MP, --max_jpeg_scans 64) and
with none, each served by the local server (`python -m serving`) in its own process, the
unlimited one also with --max_request_batch_size=0 --max_request_tensor_bytes=0. Each
request goes once to each server over gRPC; the table shows the status, the server's CPU
seconds (/proc/PID/stat) and the growth of its peak RSS (VmHWM, reset through
/proc/PID/clear_refs just before the request). The first row, an ordinary photo, is the
reference. The limits in the exported graph protect the real TF Serving too.
Results are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time

from absl import app

from bench.coldstart import read_memory
from bench.serving import _JSON, server

MODEL_NAME = "bench"
IMAGE_SIZE = 32


def save_models(root: str) -> dict[str, str]:
    """root/{limited,unlimited}/1: the same model with and without the graph's limits."""
    import keras

    from export import signatures

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    bases = {}
    for name, limits in (("limited", {}), ("unlimited", {"max_pixels": None,
                                                          "max_jpeg_scans": None})):
        bases[name] = os.path.join(root, name, MODEL_NAME)
        signatures.ServingModule(model, labels=["a", "b", "c"], image_size=IMAGE_SIZE,
                                 **limits).save(os.path.join(bases[name], "1"))
    return bases


def attacks() -> dict[str, tuple[str, object]]:
    """Name -> (signature, TensorProto builder) of each request."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from export.warmup import synthetic_photo
    from serving import conformance

    def strings(values, dims=None):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
        proto.tensor_shape.dim.add(size=dims or len(values))
        return proto

    def floats(dims, values):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
        for size in dims:
            proto.tensor_shape.dim.add(size=size)
        return proto

    return {
        "a 640x480 photo (reference)": ("serving_default",
                                        lambda: strings([synthetic_photo()])),
        "A: GIF, 144 MP frame on a 10x10 screen (52 KB)": (
            "serving_default", lambda: strings([conformance.gif_bomb()])),
        "C: 4000x4000 progressive JPEG, last scan x2000": (
            "serving_default", lambda: strings([conformance.progressive_scan_bomb()])),
        "F: float [1,9600,9600,3] declared, 1 value sent": (
            "predict_images", lambda: floats([1, 9600, 9600, 3], [0.0])),
        "F: string [5000000] declared, 1 value sent": (
            "serving_default", lambda: strings([b"x" * 40], dims=5_000_000)),
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(grpc_address: str, pid: int, signature: str, tensor) -> dict:
    """One Predict: status, server CPU seconds, server peak RSS growth."""
    import grpc
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

    alias = "images" if signature == "predict_images" else "image_bytes"
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=signature))
    request.inputs[alias].CopyFrom(tensor)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS.
    before, cpu = read_memory(pid)["rss_mib"], _cpu_seconds(pid)
    started = time.monotonic()
    options = [("grpc.max_send_message_length", 1 << 30)]
    with grpc.insecure_channel(grpc_address, options=options) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                            timeout=300)
            status = "OK"
        except grpc.RpcError as error:
            status = error.code().name
    time.sleep(0.2)  # Let the server finish what a failed call left running.
    return {"status": status, "wall_s": time.monotonic() - started,
            "server_cpu_s": _cpu_seconds(pid) - cpu,
            "peak_rss_growth_mib": read_memory(pid)["hwm_mib"] - before}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "tensorflow": tf.__version__, "runs": {}}
    requests = {name: (signature, build()) for name, (signature, build) in attacks().items()}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        bases = save_models(tmp)
        servers = {
            "limited": stack.enter_context(server(bases["limited"], None, 8)),
            "unlimited": stack.enter_context(server(
                bases["unlimited"], None, 8, ("--max_request_batch_size=0",
                                              "--max_request_tensor_bytes=0"))),
        }
        for name, (signature, tensor) in requests.items():
            results["runs"][name] = {
                kind: measure(address, pid, signature, tensor)
                for kind, (address, _, pid) in servers.items()}
            print(name, json.dumps(results["runs"][name]), flush=True)
    print(f"\n{results['machine']}, TF {results['tensorflow']}; the server's CPU seconds and "
          "peak RSS growth per request")
    print(f"{'request':<50}{'limits: status':>18}{'CPU s':>8}{'MiB':>7}"
          f"{'none: status':>18}{'CPU s':>8}{'MiB':>7}")
    for name, run in results["runs"].items():
        cells = "".join(f"{run[k]['status']:>18}{run[k]['server_cpu_s']:>8.2f}"
                        f"{run[k]['peak_rss_growth_mib']:>7.0f}" for k in ("limited", "unlimited"))
        print(f"{name:<50}{cells}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
