"""gRPC client for TF Serving's PredictionService and ModelService, without TensorFlow.

    from clients import GrpcClient

    with GrpcClient("localhost:8500", model="effnet", timeout=10) as client:
        for prediction in client.predict(["cat.jpg", "dog.jpg"]):
            print(prediction.label, round(prediction.score, 3), prediction.top(3))
        print(client.status())                # [VersionStatus(version=1, state='AVAILABLE')]
        print(client.metadata().signatures)   # serving_default, classify, ...

TLS and auth: GrpcClient("grpcs://models.example.com:443", model="effnet",
root_certificates="ca.pem", metadata=[("authorization", "Bearer ...")]).
The asyncio variant with the same methods is clients.aio.AsyncGrpcClient.
"""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from typing import Any

import grpc

from clients import client_base, errors, images, protos, tensor_protos
from clients import retry as retry_lib
from clients.results import ModelMetadata, Prediction, Signature, TensorSpec, VersionStatus

# TF Serving lifts the server's limits; gRPC clients default to 4 MB received, which one
# 12 MP photo or a [N, 1000] probabilities answer exceeds.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# gRPC servers (TF Serving included) by default answer pings more often than every 5
# minutes on idle connections with GOAWAY "too_many_pings": 5 minutes is the most frequent
# keepalive that works against a server with default settings. It still detects dead
# connections (a NAT or a load balancer dropping idle flows) before they fail a request.
DEFAULT_KEEPALIVE_S = 300.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 20.0

Metadata = Sequence[tuple[str, str | bytes]]


def _read(value: bytes | str | os.PathLike | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as file:
        return file.read()


def parse_target(target: str) -> tuple[str, bool | None]:
    """("host:port", tls) from "host:port", "grpc://host:port" or "grpcs://host:port".

    tls is None when the scheme does not say (then credentials decide).
    """
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if target.startswith(scheme):
            return target[len(scheme):].rstrip("/"), tls
    if "://" in target:
        raise ValueError(f"gRPC targets are host:port, grpc://host:port or grpcs://host:port; "
                         f"got {target!r}")
    return target, None


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                    keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
                    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
                    server_name_override: str | None = None,
                    extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The channel arguments the clients use (see the constants above for why)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if keepalive_s is not None:
        options += [("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                    ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
                    # Pinging idle connections is what servers punish; only ping with calls.
                    ("grpc.keepalive_permit_without_calls", 0)]
    if server_name_override:
        options.append(("grpc.ssl_target_name_override", server_name_override))
    return options + list(extra)


def error_from_rpc(error: grpc.RpcError) -> errors.ClientError:
    """The typed error for a failed RPC (sync or asyncio), with the server's message."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code is None:
        return errors.ServerError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # The client's own size limit, not an overloaded server: retrying cannot help.
        return errors.InvalidInputError(
            f"{details} (raise max_message_bytes or downscale with max_size)",
            code="RESOURCE_EXHAUSTED")
    return errors.from_code(code.value[0], details)


class _GrpcCommon(client_base.ClientBase):
    """Request building and response parsing shared by the sync and asyncio clients."""

    _EAGER_CHANNEL = False

    def __init__(self, target: str, model: str, *, version: int | None = None,
                 label: str | None = None, signature: str = client_base.DEFAULT_SIGNATURE,
                 input_name: str = client_base.DEFAULT_INPUT,
                 timeout: float | None = client_base.DEFAULT_TIMEOUT_S,
                 retry: retry_lib.RetryPolicy | None = None, max_size: int | None = None,
                 quality: int = images.DEFAULT_QUALITY, metadata: Metadata = (),
                 root_certificates: bytes | str | os.PathLike | None = None,
                 private_key: bytes | str | os.PathLike | None = None,
                 certificate_chain: bytes | str | os.PathLike | None = None,
                 server_name_override: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
                 options: Sequence[tuple[str, Any]] = (), channel: Any = None):
        super().__init__(target, model, version=version, label=label, signature=signature,
                         input_name=input_name, timeout=timeout, retry=retry,
                         max_size=max_size, quality=quality)
        self.address, tls = parse_target(target)
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("a client certificate needs both private_key and "
                             "certificate_chain")
        if tls is False and (root_certificates or private_key):
            raise ValueError("grpc:// means plaintext; use grpcs:// (or host:port) with "
                             "certificates")
        self.tls = bool(tls or root_certificates or private_key)
        self._credentials = None
        if self.tls:
            # root_certificates=None means the system's trust store (grpc's bundled roots).
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(root_certificates), private_key=_read(private_key),
                certificate_chain=_read(certificate_chain))
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self._options = channel_options(max_message_bytes, keepalive_s,
                                        server_name_override=server_name_override,
                                        extra=options)
        self._metadata = tuple(metadata)
        self.channel = channel
        self._owns_channel = channel is None
        self._stubs: dict = {}
        if channel is not None:
            self._stubs = _make_stubs(channel)
        elif self._EAGER_CHANNEL:
            self._ensure_channel()

    def _ensure_channel(self) -> dict:
        raise NotImplementedError

    def _call_metadata(self, metadata: Metadata | None) -> tuple | None:
        combined = self._metadata + tuple(metadata or ())
        return combined or None

    def _spec(self, model_spec, signature: str | None) -> None:
        model_spec.name = self.model
        if self.version is not None:
            model_spec.version.value = self.version
        elif self.label is not None:
            model_spec.version_label = self.label
        if signature is not None:
            model_spec.signature_name = signature

    def _encode(self, image_inputs) -> list[bytes]:
        return images.encode_all(image_inputs, max_size=self.max_size, quality=self.quality)

    def predict_request(self, encoded: list[bytes], signature: str | None):
        """The PredictRequest predict() sends for these encoded images (not sent here)."""
        request = protos.PredictRequest()
        self._spec(request.model_spec, signature or self.signature)
        request.inputs[self.input_name].CopyFrom(tensor_protos.string_tensor(encoded))
        # Only what predict() reads: probabilities can dwarf the rest for many classes.
        request.output_filter.extend(client_base.PREDICT_OUTPUTS)
        return request

    @staticmethod
    def _predictions(response, count: int, top_k: int | None) -> list[Prediction]:
        outputs = response.outputs
        client_base.check_outputs(outputs)
        ids = tensor_protos.rows(outputs["class_ids"]) if "class_ids" in outputs else None
        return client_base.predictions_from_rows(tensor_protos.rows(outputs["classes"]),
                                                 tensor_protos.rows(outputs["scores"]), ids,
                                                 count, top_k)

    def classify_request(self, encoded: list[bytes], signature: str | None):
        """The ClassificationRequest classify() sends for these encoded images."""
        request = protos.ClassificationRequest()
        self._spec(request.model_spec, signature or client_base.DEFAULT_CLASSIFY_SIGNATURE)
        for data in encoded:
            example = request.input.example_list.examples.add()
            example.features.feature[client_base.EXAMPLE_IMAGE_KEY].bytes_list.value.append(data)
        return request

    @staticmethod
    def _classifications(response, count: int, top_k: int | None) -> list[Prediction]:
        rows = response.result.classifications
        return client_base.predictions_from_rows(
            [[c.label for c in row.classes] for row in rows],
            [[c.score for c in row.classes] for row in rows], None, count, top_k)

    def metadata_request(self):
        """The GetModelMetadataRequest metadata() sends."""
        request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, None)
        return request

    @staticmethod
    def _model_metadata(response) -> ModelMetadata:
        signatures: dict[str, Signature] = {}
        if "signature_def" in response.metadata:
            packed = response.metadata["signature_def"]
            # Any's type_url names the official type; the bytes parse as our wire twin.
            if not packed.type_url.endswith(protos.SIGNATURE_DEF_MAP_TYPE):
                raise errors.ServerError(f"unexpected signature_def type {packed.type_url!r}",
                                         code="INTERNAL")
            signature_map = protos.SignatureDefMap.FromString(packed.value)
            for name, definition in signature_map.signature_def.items():
                signatures[name] = Signature(
                    definition.method_name,
                    {k: _tensor_spec(v) for k, v in definition.inputs.items()},
                    {k: _tensor_spec(v) for k, v in definition.outputs.items()})
        spec = response.model_spec
        return ModelMetadata(spec.name, spec.version.value, signatures)

    def status_request(self):
        """The GetModelStatusRequest status() sends."""
        request = protos.GetModelStatusRequest()
        self._spec(request.model_spec, None)
        return request

    @staticmethod
    def _statuses(response) -> list[VersionStatus]:
        result = [VersionStatus(s.version, protos.ModelVersionState.Name(s.state)
                                if s.state in protos.ModelVersionState.values() else
                                str(s.state),
                                errors.CODE_NAMES.get(s.status.error_code, "UNKNOWN"),
                                s.status.error_message)
                  for s in response.model_version_status]
        return sorted(result, key=lambda s: s.version)


def _tensor_spec(info) -> TensorSpec:
    dtype = (protos.DataType.Name(info.dtype) if info.dtype in protos.DataType.values()
             else f"DT_{info.dtype}")
    if info.tensor_shape.unknown_rank:
        return TensorSpec(dtype, None)
    return TensorSpec(dtype, tuple(d.size for d in info.tensor_shape.dim))


_METHODS = {
    "predict": (protos.PREDICTION_SERVICE + "Predict", protos.PredictResponse),
    "classify": (protos.PREDICTION_SERVICE + "Classify", protos.ClassificationResponse),
    "metadata": (protos.PREDICTION_SERVICE + "GetModelMetadata",
                 protos.GetModelMetadataResponse),
    "status": (protos.MODEL_SERVICE + "GetModelStatus", protos.GetModelStatusResponse),
}


def _make_stubs(channel) -> dict:
    """Callables for the official method paths, (de)serialising our wire-compatible classes."""
    return {name: channel.unary_unary(path, request_serializer=_serialize,
                                      response_deserializer=cls.FromString)
            for name, (path, cls) in _METHODS.items()}


class GrpcClient(_GrpcCommon):
    """Blocking gRPC client; thread-safe (one channel, shared by all threads).

    Args:
        target: "host:port", "grpc://host:port" (plaintext) or "grpcs://host:port" (TLS).
        model: the model name.
        version: a version number to call, or
        label: a version label ("stable"); neither means the latest version.
        signature: the predict signature ("serving_default").
        input_name: its image bytes input ("image_bytes").
        timeout: default deadline per call in seconds, retries included (None: no deadline).
        retry: RetryPolicy for UNAVAILABLE / RESOURCE_EXHAUSTED (default 3 attempts).
        max_size: downscale images whose longer side exceeds this before sending.
        quality: JPEG quality when re-encoding (downscaled, PIL or numpy images).
        metadata: gRPC metadata sent with every call, e.g. [("authorization", "Bearer t")].
        root_certificates: PEM bytes or path of the CA to trust (TLS); None with grpcs://
            uses the system roots.
        private_key, certificate_chain: PEM bytes or paths of a client certificate (mTLS).
        server_name_override: TLS name to verify instead of the target's host (tests).
        max_message_bytes: send and receive limit (gRPC's default 4 MB is too small).
        keepalive_s: keepalive ping interval on busy connections (None: off).
        options: extra channel arguments, e.g. [("grpc.lb_policy_name", "round_robin")].
        channel: an existing grpc.Channel to use instead (the client will not close it);
            for AsyncGrpcClient a grpc.aio.Channel.

    Raises:
        ValueError: invalid arguments.
    """

    # Created with the client: a sync channel connects lazily anyway, and creating it here
    # avoids a lock around lazy creation in a thread-safe client.
    _EAGER_CHANNEL = True

    def _ensure_channel(self) -> dict:
        if self.channel is None:
            if self.tls:
                self.channel = grpc.secure_channel(self.address, self._credentials,
                                                   self._options)
            else:
                self.channel = grpc.insecure_channel(self.address, self._options)
            self._stubs = _make_stubs(self.channel)
        return self._stubs

    def _invoke(self, method: str, request, timeout, metadata):
        stub = self._stubs[method]
        call_metadata = self._call_metadata(metadata)

        def attempt(remaining: float | None):
            try:
                return stub(request, timeout=remaining, metadata=call_metadata)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from None

        return retry_lib.call(attempt, self.retry, self._timeout(timeout))

    def predict(self, image_inputs, *, top_k: int | None = None, signature: str | None = None,
                timeout: float | None | types.EllipsisType = ...,
                metadata: Metadata | None = None) -> list[Prediction]:
        """Top-k classes for each image, in input order (one request for all images).

        Args:
            image_inputs: a list of paths, bytes, PIL images or numpy arrays (or one of them).
            top_k: keep at most this many classes per image (the model returns its own k).
            signature: overrides the client's predict signature for this call.
            timeout: this call's deadline in seconds (default: the client's).
            metadata: extra gRPC metadata for this call.

        Raises:
            ClientError subclasses, e.g. InvalidInputError for an undecodable image.
        """
        encoded = self._encode(image_inputs)
        response = self._invoke("predict", self.predict_request(encoded, signature),
                                timeout, metadata)
        return self._predictions(response, len(encoded), top_k)

    def classify(self, image_inputs, *, top_k: int | None = None,
                 signature: str = client_base.DEFAULT_CLASSIFY_SIGNATURE,
                 timeout: float | None | types.EllipsisType = ...,
                 metadata: Metadata | None = None) -> list[Prediction]:
        """The Classify API (signature method tensorflow/serving/classify): each image goes
        as a tf.Example with bytes feature "image/encoded". Same result as predict()."""
        encoded = self._encode(image_inputs)
        response = self._invoke("classify", self.classify_request(encoded, signature),
                                timeout, metadata)
        return self._classifications(response, len(encoded), top_k)

    def metadata(self, *, timeout: float | None | types.EllipsisType = ...,
                 metadata: Metadata | None = None) -> ModelMetadata:
        """The signatures of the version this client calls."""
        response = self._invoke("metadata", self.metadata_request(), timeout, metadata)
        return self._model_metadata(response)

    def status(self, *, timeout: float | None | types.EllipsisType = ...,
               metadata: Metadata | None = None) -> list[VersionStatus]:
        """The state of each version (only the client's version if it has one)."""
        response = self._invoke("status", self.status_request(), timeout, metadata)
        return self._statuses(response)

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _serialize(message) -> bytes:
    return message.SerializeToString()
