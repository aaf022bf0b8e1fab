"""gRPC and REST clients for TF Serving (and serving/'s local server), without TensorFlow.

Needs only grpcio, protobuf and requests (Pillow/numpy only for PIL or array inputs and
client-side downscaling). Light install for apps: `pip install -r clients/requirements.txt`.

    from clients import GrpcClient, RestClient, errors

    with GrpcClient("localhost:8500", model="effnet", label="stable") as client:
        for prediction in client.predict(["cat.jpg", "dog.jpg"]):
            print(prediction.label, prediction.score, prediction.top(3))

    rest = RestClient("http://localhost:8501", model="effnet")
    try:
        rest.predict([b"not an image"])
    except errors.InvalidInputError as error:
        print(error.code, error.message)   # INVALID_ARGUMENT image 0: ...

Command line: `python -m clients predict --server=grpc://localhost:8500 --model=effnet
photos/`; load generator: `python -m clients.loadtest`. The asyncio client is
clients.aio.AsyncGrpcClient. Importing this package only loads the module you use.
"""

from __future__ import annotations

import importlib

# Lazily resolved (PEP 562): `import clients` stays cheap, and a REST-only app never loads
# grpc (nor a gRPC-only app requests).
_EXPORTS = {
    "GrpcClient": "clients.grpc_client",
    "RestClient": "clients.rest_client",
    "AsyncGrpcClient": "clients.aio",
    "RetryPolicy": "clients.retry",
    "Prediction": "clients.results",
    "ModelMetadata": "clients.results",
    "Signature": "clients.results",
    "TensorSpec": "clients.results",
    "VersionStatus": "clients.results",
    "ClientError": "clients.errors",
    "InvalidInputError": "clients.errors",
    "NotFoundError": "clients.errors",
    "UnavailableError": "clients.errors",
    "DeadlineExceededError": "clients.errors",
    "PermissionDeniedError": "clients.errors",
    "UnimplementedError": "clients.errors",
    "ServerError": "clients.errors",
}

__all__ = sorted(_EXPORTS) + ["connect"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in ("errors", "images", "protos", "results", "retry", "grpc_client",
                "rest_client", "aio", "loadtest", "cli", "client_base", "tensor_protos"):
        return importlib.import_module(f"clients.{name}")
    raise AttributeError(f"module 'clients' has no attribute {name!r}")


def connect(server: str, model: str, **kwargs):
    """GrpcClient or RestClient by URL scheme: grpc://, grpcs:// or http://, https://.

    Raises:
        ValueError: an unknown scheme.
    """
    if server.startswith(("http://", "https://")):
        from clients.rest_client import RestClient

        return RestClient(server, model, **kwargs)
    if server.startswith(("grpc://", "grpcs://")):
        from clients.grpc_client import GrpcClient

        return GrpcClient(server, model, **kwargs)
    raise ValueError(f"--server must start with grpc://, grpcs://, http:// or https://, got "
                     f"{server!r}")
