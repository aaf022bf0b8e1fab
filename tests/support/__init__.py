"""The test suite's helpers, each defined once; test modules import them from here.

Layout (the one home of test support): this package, imported as `support` (pytest puts
tests/ on sys.path). Its __init__ holds the general helpers below; support.k8s renders and
reads the k8s/ kustomizations and finds the k8s tools; support.http_stub is a stand-in JSON
HTTP server. Fixtures live in tests/conftest.py, which imports from here; a test module
imports neither conftest nor another test module. tests/mutation_check.py is a script that
runs the tests against deliberate bugs, not a helper, so it stays beside them.

What the conformance models are, and the local server, are public in serving.conformance
(bench/ uses them too); what is here is only the tests' plumbing:

    from support import conformance_endpoint, make_run, wait_for

    with conformance_endpoint(tmp_path / "models") as (server, endpoint):
        ...
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time

from serving import conformance
from serving.conformance import encode_image as encode  # noqa: F401 - one PIL encoder.

ADDRESSES_ENV = "TFSERVING_ADDRESSES"


def in_ci() -> bool:
    """CI=true, as the CI runner sets it when it runs .ci/run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def free_port() -> int:
    """A loopback port free right now, for where a port must be known before its process
    binds it (python -m serving, whose TF Serving flags give port 0 other meanings; a
    Makefile variable; Prometheus's listen address), or must stay closed. Servers run
    in-process bind ports the OS picks and report them instead (conformance.local_server):
    a port chosen here can be taken by someone else before it is bound.
    """
    from train.distribute import free_loopback_ports

    return free_loopback_ports(1)[0]


# --- The conformance models, served locally or by an external TF Serving ----------------------


def external_endpoint() -> conformance.Endpoint | None:
    """TFSERVING_ADDRESSES="grpc_host:port,http://host:port", or None."""
    value = os.environ.get(ADDRESSES_ENV, "").strip()
    if not value:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    grpc_address = next((p for p in parts if not p.startswith("http")), None)
    rest_address = next((p for p in parts if p.startswith("http")), None)
    if not grpc_address or not rest_address:
        raise ValueError(f"{ADDRESSES_ENV} must be 'grpc_host:port,http://host:port', got "
                         f"{value!r}")
    return conformance.Endpoint(grpc=grpc_address, rest=rest_address.rstrip("/"), local=False)


def cached_conformance_models(root: str | os.PathLike) -> pathlib.Path:
    """write_conformance_models once per root (test modules share the session's copy)."""
    import fcntl

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / ".done"
        if not done.exists():
            conformance.write_conformance_models(root)
            done.write_text("ok")
    return root / "models.config"


@contextlib.contextmanager
def conformance_endpoint(root: str | os.PathLike, **option_overrides):
    """The external TF Serving named by TFSERVING_ADDRESSES, else a local server on the
    conformance models (written under root once); yields (server or None, Endpoint)."""
    external = external_endpoint()
    if external is not None:
        yield None, external
        return
    options = dict(model_config_file=str(cached_conformance_models(root)),
                   allow_version_labels_for_unavailable_models=True)
    options.update(option_overrides)
    with conformance.local_server(**options) as (server, endpoint):
        yield server, endpoint


def statuses(rest: str, name: str = conformance.MODEL_NAME) -> dict[str, dict]:
    """GET /v1/models/NAME: the model_version_status entries by version."""
    import requests

    response = requests.get(f"{rest}/v1/models/{name}", timeout=10)
    assert response.status_code == 200, response.text
    return {s["version"]: s for s in response.json()["model_version_status"]}


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """predicate's first truthy value, polled every 0.1 s; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --- Images ----------------------------------------------------------------------------------


def png_of_size(width: int, height: int, seed: int = 0) -> bytes:
    """A noisy (incompressible) PNG, for large-message tests."""
    import numpy as np
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels, compression=0).numpy()


def photo_jpeg(name: str = "chelsea", **kwargs) -> bytes:
    """A scikit-image photo (chelsea, coffee, astronaut...) as a JPEG."""
    import skimage.data
    from PIL import Image

    return encode(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), **kwargs)


def oversized_png() -> bytes:
    """A tiny PNG whose IHDR claims 60000 x 60000 (a decompression-bomb header)."""
    from PIL import Image

    data = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    data[16:24] = (60000).to_bytes(4, "big") * 2
    return bytes(data)


# --- A finished training run of a tiny model that export/ can export -------------------------

RUN_IMAGE_SIZE = 32
RUN_LABELS = ["red", "green", "blue"]
RUN_COLOURS = {"red": (220, 30, 40), "green": (30, 200, 50), "blue": (20, 40, 210)}


def quadrant_image(top_left: str, other: str = "blue", size=(64, 48)):
    """A PIL image: other colour everywhere except the top-left quadrant."""
    from PIL import Image

    image = Image.new("RGB", size, RUN_COLOURS[other])
    image.paste(RUN_COLOURS[top_left], (0, 0, size[0] // 2, size[1] // 2))
    return image


def build_quadrant_model():
    """A Keras model classifying an image by the colour of its top-left quadrant."""
    import keras

    size = RUN_IMAGE_SIZE
    inputs = keras.Input((size, size, 3))
    corner = keras.layers.Cropping2D(((0, size // 2), (0, size // 2)))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(corner)
    logits = keras.layers.Dense(3, kernel_initializer="identity",
                                bias_initializer="zeros")(pooled)
    # Non-trainable variables (moving statistics) are what an old export lost first.
    logits = keras.layers.BatchNormalization(moving_variance_initializer="ones")(logits)
    outputs = keras.layers.Softmax()(keras.layers.Rescaling(0.05)(logits))
    return keras.Model(inputs, outputs)


def make_run(root: pathlib.Path) -> pathlib.Path:
    """A finished training run directory, as python -m train leaves it."""
    import json

    from train import rundir
    from train.config import TrainConfig

    data_dir, run = root / "data", root / "run"
    for split in ("train", "test"):
        for name in RUN_LABELS:
            folder = data_dir / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.jpg").write_bytes(
                    encode(quadrant_image(name, other=name), quality=90 - i))
    run.mkdir()
    build_quadrant_model().save(run / "model.keras")
    rundir.write_labels(RUN_LABELS, run / "labels.txt")
    rundir.save_config(TrainConfig(data_dir=str(data_dir), output_dir=str(run),
                                   image_size=RUN_IMAGE_SIZE),
                       run / "config.json", image_size=RUN_IMAGE_SIZE, class_count=3,
                       batch_size=32)
    (run / "metrics.json").write_text(json.dumps({"evaluation": {"top1": 0.99}}))
    return run


def save_as_tf_module(module, path: pathlib.Path) -> None:
    """How this project exported before: the Keras model of a signatures.ServingModule tracked
    inside a tf.Module and written by tf.saved_model.save. tf.saved_model.load runs the
    result; TF Serving cannot."""
    import tensorflow as tf

    holder = tf.Module()
    holder.model, holder.label_table = module.model, module.label_table
    tf.saved_model.save(holder, str(path), signatures={
        name: function.get_concrete_function()
        for name, function in module.signatures().items()})


# --- Memory ----------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int:
    """A kB field of this process's /proc/self/status, e.g. VmRSS or VmHWM."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


@contextlib.contextmanager
def peak_rss_growth():
    """Yields a dict whose "mb" is, after the block, this process's peak RSS growth in it.

    Writing 5 to /proc/self/clear_refs resets VmHWM (the peak) to the current RSS (Linux
    >= 4.0), so an earlier peak cannot hide this one; where that is refused, only growth
    above the earlier peak counts.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        base = proc_status_kb("VmRSS")
    except OSError:
        base = proc_status_kb("VmHWM")
    growth: dict = {}
    yield growth
    growth["mb"] = max(0, proc_status_kb("VmHWM") - base) / 1024
