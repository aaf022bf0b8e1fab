"""TF Serving's REST API on aiohttp (tensorflow_serving/model_servers/http_server.cc,
http_rest_api_handler.cc, http_rest_api_util.cc, g3doc/api_rest.md).

    GET  /v1/models/NAME[/versions/N | /labels/L]            model status
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N | /labels/L]:predict | :classify | :regress

Every answer is JSON; errors are {"error": message} with TF Serving's status-to-HTTP
mapping. The model work runs on a thread pool, each request bounded by
--rest_api_timeout_in_ms and by the request limits (tensors.RequestLimits).

Request bodies: a Content-Encoding containing "gzip" is inflated, at most
MAX_UNCOMPRESSED_BYTES (100 MiB) and a single gzip member whose size and CRC check, as
net_http does (server/internal/evhttp_request.cc:261-289, compression/gzip_zlib.cc:783-810);
a body that fails that is read as empty (evhttp_request.cc:251-257), so the JSON APIs answer
400 "JSON Parse error: The document is empty" (here with the reason appended). Other
encodings (deflate, br...) are not decoded: the bytes go to the JSON parser as they are. As
in TF Serving, what a body may take inflated is bounded by the size its footer declares
(<= 100 MiB), however far its data would inflate. Bodies above max_body_bytes (on the wire)
are refused with 413 before any of that (a local-server limit; TF Serving has none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import time
import urllib.parse
import zlib

import grpc
from absl import logging
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from serving import rest_json, tensors
from serving.config import DEFAULT_MAX_BODY_BYTES
from serving.data_plane import DataPlane
from serving.deadlines import request_deadline
from serving.errors import ServingError, http_status, invalid_argument
from serving.metadata import SIGNATURE_DEF_FIELD
from serving.metrics import UNKNOWN_MODEL, Metrics

# http_rest_api_util.cc (the "Gegex" spelling is TF Serving's).
_PREDICTION_API = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
_MODEL_STATUS_API = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:\/(metadata))?")
_HANDLED = re.compile(r"(?i)/v1/.*")  # kHTTPRestApiHandlerPathRegex

MAX_UNCOMPRESSED_BYTES = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes, gzip_zlib.h:100
JSON_TYPE = "application/json"


class BodyError(ValueError):
    """A compressed request body that TF Serving would read as empty."""


def gunzip(data: bytes, limit: int = MAX_UNCOMPRESSED_BYTES) -> bytes:
    """One gzip member, inflated to at most the smaller of its footer's size and limit.

    ZLib::UncompressGzipAndAllocate refuses a footer that declares more than the limit,
    then inflates into a buffer of the declared size and checks size and CRC; the same
    outcome here, inflating in a stream that stops one byte past the declared size.

    Raises:
      BodyError: the body is refused (message says why).
    """
    declared = int.from_bytes(data[-4:], "little") if len(data) > 4 else 0
    if declared > limit:
        raise BodyError(f"its gzip footer declares {declared} uncompressed bytes, more than "
                        f"the limit of {limit}")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip wrapper only
    try:
        out = inflater.decompress(data, declared + 1)
    except zlib.error as error:
        raise BodyError(f"it is not valid gzip data ({error})") from None
    if len(out) > declared:
        raise BodyError(f"it inflates to more than the {declared} bytes its gzip footer "
                        "declares")
    if not inflater.eof or inflater.unused_data:
        raise BodyError("it is not a single complete gzip member")
    return out


def _json_print(message) -> str:
    return json_format.MessageToJson(message, indent=1,
                                     always_print_fields_with_no_presence=True)


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> str:
    """ToJsonString(GetModelStatusResponse): every field printed, enums by name."""
    return _json_print(response)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> str:
    """ToJsonString(GetModelMetadataResponse): model_spec, then the unpacked signature map."""
    spec = json_format.MessageToJson(response.model_spec, indent=1,
                                     preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    signatures = json_format.MessageToJson(signature_map, indent=1,
                                           preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)
    return ('{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + signatures
            + "}\n}\n")


class RestApi:
    """The request processing, independent of aiohttp (one call per request)."""

    def __init__(self, data_plane: DataPlane, *,
                 max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES):
        self.data_plane = data_plane
        self.max_uncompressed_bytes = max_uncompressed_bytes

    @staticmethod
    def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
        if version:
            try:
                spec.version.value = int(version)
            except ValueError:
                raise invalid_argument(f"Failed to convert version: {version} to numeric.") \
                    from None
        if label:
            spec.version_label = urllib.parse.unquote(label)
        return spec

    def document(self, body: bytes, content_encoding: str = "") -> dict:
        """The JSON object of a POST body, inflated first if it is gzip (ParseJson)."""
        if body and "gzip" in content_encoding:  # NeedUncompressGzipContent: a substring.
            try:
                body = gunzip(body, self.max_uncompressed_bytes)
            except BodyError as error:
                raise invalid_argument("JSON Parse error: The document is empty (the request "
                                       f"body was read as empty: {error})") from None
        return rest_json.parse_json(body)

    def process(self, method: str, path: str, body: bytes, content_encoding: str = "",
                ) -> tuple[str, str, str]:
        """(JSON output, model name, API) or raises ServingError, like ProcessRequest.

        API is the metric label TF Serving records: the URL's verb, "" for GETs.
        """
        # The regexes ignore case, the dispatch on their captures does not
        # (http_rest_api_handler.cc ProcessRequest): ":PREDICT" and "/METADATA" match, then
        # fall through to "Malformed request" and to a status request.
        if method == "POST":
            match = _PREDICTION_API.fullmatch(path)
            if match and match[4] in ("predict", "classify", "regress"):
                name, version, label, api = match.groups()
                spec = self._model_spec(name, version, label)
                doc = self.document(body, content_encoding)
                if api == "predict":
                    return self._predict(spec, doc), spec.name, api
                if api == "classify":
                    return self._classify(spec, doc), spec.name, api
                return self._regress(spec, doc), spec.name, api
        elif method == "GET":
            match = _MODEL_STATUS_API.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = self._model_spec(name, version, label)
                if subresource == "metadata":
                    request = get_model_metadata_pb2.GetModelMetadataRequest(
                        model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
                    response = self.data_plane.get_model_metadata(request)
                    return metadata_json(response), spec.name, ""
                request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
                return status_json(self.data_plane.get_model_status(request)), spec.name, ""
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, spec, doc: dict) -> str:
        spec.signature_name = rest_json.signature_name(doc)
        fmt = []

        def build(signature):
            kind, arrays = rest_json.predict_inputs(doc, signature.inputs)
            fmt.append(kind)
            return arrays

        outputs = self.data_plane.predict_json(spec, build)
        return rest_json.predict_response(outputs, fmt[0])

    def _classify(self, spec, doc: dict) -> str:
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        rest_json.fill_example_request(doc, request)
        return rest_json.classify_response(self.data_plane.classify(request).result)

    def _regress(self, spec, doc: dict) -> str:
        request = regression_pb2.RegressionRequest(model_spec=spec)
        rest_json.fill_example_request(doc, request)
        return rest_json.regress_response(self.data_plane.regress(request).result)


class RestServer:
    """aiohttp on its own thread and event loop; model work on a thread pool."""

    def __init__(self, data_plane: DataPlane, *, port: int, host: str = "0.0.0.0",
                 timeout_in_ms: int = 30000, num_threads: int = 8,
                 prometheus_path: str | None = None, metrics: Metrics | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
                 limits: tensors.RequestLimits | None = None,
                 enable_cors_support: bool = False):
        """limits bound each request's input tensors (None: no bound, as TF Serving)."""
        self.api = RestApi(data_plane, max_uncompressed_bytes=max_uncompressed_bytes)
        self.limits = limits
        self.metrics = metrics or data_plane.metrics
        self.host, self.port = host, port
        self.timeout = timeout_in_ms / 1000 if timeout_in_ms > 0 else None
        self.prometheus_path = prometheus_path
        self.max_body_bytes = max_body_bytes
        self.cors = enable_cors_support
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads),
                                                           thread_name_prefix="rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._accepting = True

    def start(self) -> int:
        """Binds and serves; returns the bound port (useful with port=0 in tests)."""
        self._thread = threading.Thread(target=self._serve, name="rest-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self.port

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start_site())
        except BaseException as error:  # Port in use and the like: report to start().
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            # Connections still open (a client that kept sending after a 413, say) are
            # cancelled here, while the loop can still run their cleanup.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Bodies are inflated (gzip only, bounded) on the pool, not by aiohttp, which also
        # takes deflate and inflates without a bound before client_max_size is checked.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # Bound port for port=0.
        if sockets:
            self.port = sockets[0].getsockname()[1]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": JSON_TYPE}
        if self.cors:
            headers.update({"Access-Control-Allow-Origin": "*",
                            "Access-Control-Allow-Methods": "POST, GET",
                            "Access-Control-Allow-Headers": "Content-Type"})
        return headers

    def _response(self, status: int, text: str) -> web.Response:
        # Bytes, not text=: aiohttp would append "; charset=utf-8" to the Content-Type,
        # which TF Serving sends as exactly "application/json" (http_rest_api_util.cc).
        return web.Response(status=status, headers=self._headers(), body=text.encode())

    def _error(self, error: ServingError) -> web.Response:
        return self._response(http_status(error.code), rest_json.error_body(error.message))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # TF Serving matches the path with its query string (EvHTTPRequest::uri_path is
        # path_and_query): "?x=1" becomes part of a model name or breaks the match.
        path = request.rel_url.raw_path_qs
        if (self.prometheus_path and request.rel_url.raw_path == self.prometheus_path
                and request.method == "GET"):
            return web.Response(text=self.metrics.render(), content_type="text/plain")
        if not _HANDLED.fullmatch(path):
            return web.Response(status=404, text="404 Not Found")
        if not self._accepting:
            return self._error(ServingError(grpc.StatusCode.UNAVAILABLE,
                                            "Server is shutting down"))
        started = time.monotonic()
        if request.method == "OPTIONS":  # Counted like any request (http_server.cc:170-201).
            if re.search(r"https?://", request.headers.get("Origin", "")):
                self._record(UNKNOWN_MODEL, "OK", "", started)
                return web.Response(status=200, headers=self._headers())
            error = ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                 "Origin header is missing in CORS preflight")
            self._record(UNKNOWN_MODEL, error.code_name, "", started)
            return self._error(error)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._response(413, rest_json.error_body(
                f"Request body larger than the server's limit of {self.max_body_bytes} bytes"))
        except Exception as error:  # A connection cut mid-body and the like.
            return self._error(invalid_argument(f"Failed to read the request body: {error}"))
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, self._process, request.method, path, body,
                                    request.headers.get("Content-Encoding", ""))
        try:
            status, text, model, api = await asyncio.wait_for(work, self.timeout)
        except asyncio.TimeoutError:
            error = ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 "Deadline Exceeded: the request took longer than "
                                 f"--rest_api_timeout_in_ms={self.timeout * 1000:.0f}")
            self._record(self._model_of(path), error.code_name, "", started)
            return self._error(error)
        self._record(model, status.code_name, api, started)
        if status.code != grpc.StatusCode.OK:
            return self._error(status)
        return self._response(200, text)

    def _record(self, model: str, status: str, api: str, started: float) -> None:
        self.metrics.record_request(model, status, api=api, entrypoint="REST",
                                    latency_us=(time.monotonic() - started) * 1e6)

    @staticmethod
    def _model_of(path: str) -> str:
        match = re.match(r"(?i)/v1/models/([^/:]+)", path)
        return urllib.parse.unquote(match[1]) if match else ""

    def _process(self, method: str, path: str, body: bytes, content_encoding: str):
        """Runs on the pool: never raises (a bad request must not hurt the server)."""
        try:
            with request_deadline(self.timeout), tensors.request_limits(self.limits):
                text, model, api = self.api.process(method, path, body, content_encoding)
            return ServingError(grpc.StatusCode.OK, ""), text, model, api
        except ServingError as error:
            return error, "", self._model_of(path), ""
        except Exception as error:
            logging.exception("REST request %s %s failed", method, path)
            return ServingError.from_exception(error), "", self._model_of(path), ""

    def stop_accepting(self) -> None:
        self._accepting = False

    def stop(self, grace: float = 10.0) -> None:
        """Closes the listener, lets requests in flight finish (up to grace), stops."""
        self._accepting = False
        if self._loop is None or self._runner is None:
            return

        async def shutdown():
            await self._runner.shutdown()
            await self._runner.cleanup()

        future = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        try:
            future.result(timeout=grace + 5)
        except Exception:  # Shutting down anyway.
            logging.exception("REST server shutdown")
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
