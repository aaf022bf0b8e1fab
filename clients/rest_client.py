"""REST client for TF Serving's HTTP/JSON API (/v1/models/...), without TensorFlow.

    from clients import RestClient

    with RestClient("http://localhost:8501", model="effnet", timeout=10) as client:
        for prediction in client.predict(["cat.jpg", "dog.jpg"]):
            print(prediction.label, round(prediction.score, 3), prediction.top(3))
        print(client.status())
        print(client.metadata().signatures["serving_default"].inputs)

Images go as {"b64": ...} in the columnar format ({"inputs": {"image_bytes": [...]}}),
which names the input explicitly. Same methods, results and errors as GrpcClient.
"""

from __future__ import annotations

import base64
import gzip as gzip_lib
import json
import types
from collections.abc import Mapping

import requests
import requests.adapters

from clients import client_base, errors, images
from clients import retry as retry_lib
from clients.results import ModelMetadata, Prediction, VersionStatus

DEFAULT_CONNECT_TIMEOUT_S = 5.0


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


class RestClient(client_base.ClientBase):
    """HTTP client over one requests.Session (pooled keep-alive connections).

    Args:
        target: the REST base URL, "http://host:8501" or "https://...".
        model, version, label, signature, input_name, timeout, retry, max_size, quality:
            as for GrpcClient. The timeout covers retries; each attempt is bounded as
            requests bounds it (connect, then each read).
        headers: HTTP headers for every call, e.g. {"Authorization": "Bearer ..."}.
        gzip: gzip request bodies (Content-Encoding: gzip); base64 text shrinks by about a
            quarter, worth it on slow links, not on a LAN.
        verify: TLS verification (True, False, or a CA bundle path), as in requests.
        cert: client certificate path, or (cert, key) paths, as in requests.
        pool_maxsize: connections kept per host; set it to the app's concurrency.
        connect_timeout: the longest wait for a TCP/TLS connection (within the deadline).
        session: a requests.Session to use instead (the client will not close it).

    Raises:
        ValueError: invalid arguments.
    """

    def __init__(self, target: str, model: str, *, version: int | None = None,
                 label: str | None = None, signature: str = client_base.DEFAULT_SIGNATURE,
                 input_name: str = client_base.DEFAULT_INPUT,
                 timeout: float | None = client_base.DEFAULT_TIMEOUT_S,
                 retry: retry_lib.RetryPolicy | None = None, max_size: int | None = None,
                 quality: int = images.DEFAULT_QUALITY,
                 headers: Mapping[str, str] | None = None, gzip: bool = False,
                 verify: bool | str = True, cert: str | tuple[str, str] | None = None,
                 pool_maxsize: int = 10, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 session: requests.Session | None = None):
        super().__init__(target, model, version=version, label=label, signature=signature,
                         input_name=input_name, timeout=timeout, retry=retry,
                         max_size=max_size, quality=quality)
        if not target.startswith(("http://", "https://")):
            raise ValueError(f"REST targets are http(s)://host:port, got {target!r}")
        if pool_maxsize < 1:
            raise ValueError(f"pool_maxsize must be positive, got {pool_maxsize}")
        self.base_url = target.rstrip("/")
        self.gzip = gzip
        self.connect_timeout = connect_timeout
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Retries are ours (typed errors, backoff, deadline), not urllib3's.
            adapter = requests.adapters.HTTPAdapter(pool_connections=1,
                                                    pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.verify = verify
            session.cert = cert
        self.session = session
        self._headers = dict(headers or {})

    # --- URLs and transport ---------------------------------------------------------------

    def _model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{self.model}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        elif self.label is not None:
            url += f"/labels/{self.label}"
        return url

    def _request(self, method: str, url: str, body: dict | None, timeout, headers):
        data = None
        call_headers = dict(self._headers)
        call_headers.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            call_headers["Content-Type"] = "application/json"
            if self.gzip:
                data = gzip_lib.compress(data, compresslevel=5)
                call_headers["Content-Encoding"] = "gzip"

        def attempt(remaining: float | None):
            limits = (None if remaining is None else
                      (min(self.connect_timeout, remaining), remaining))
            try:
                response = self.session.request(method, url, data=data, headers=call_headers,
                                                timeout=limits)
            except requests.RequestException as error:
                if _timed_out(error):
                    # Also ConnectTimeout: the deadline ran out, as gRPC would report it.
                    raise errors.DeadlineExceededError(f"{method} {url}: {error}",
                                                       code="DEADLINE_EXCEEDED") from None
                if isinstance(error, requests.ConnectionError):
                    # No server answered: the same as gRPC's UNAVAILABLE, hence retried.
                    raise errors.UnavailableError(f"{method} {url}: {error}",
                                                  code="UNAVAILABLE") from None
                raise errors.ClientError(f"{method} {url}: {error}") from None
            if response.status_code >= 400:
                raise _error(response)
            try:
                return response.json()
            except ValueError:
                raise errors.ServerError(f"{method} {url}: not JSON: {response.text[:200]!r}",
                                         code="INTERNAL", http_status=response.status_code
                                         ) from None

        return retry_lib.call(attempt, self.retry, self._timeout(timeout))

    # --- API ------------------------------------------------------------------------------

    def predict(self, image_inputs, *, top_k: int | None = None, signature: str | None = None,
                timeout: float | None | types.EllipsisType = ...,
                headers: Mapping[str, str] | None = None) -> list[Prediction]:
        """Top-k classes for each image, in input order (one request for all images).

        Args:
            image_inputs: a list of paths, bytes, PIL images or numpy arrays (or one of them).
            top_k: keep at most this many classes per image.
            signature: overrides the client's predict signature for this call.
            timeout: this call's deadline in seconds (default: the client's).
            headers: extra HTTP headers for this call.

        Raises:
            ClientError subclasses, e.g. InvalidInputError for an undecodable image.
        """
        encoded = images.encode_all(image_inputs, max_size=self.max_size, quality=self.quality)
        body = {"signature_name": signature or self.signature,
                "inputs": {self.input_name: [_b64(data) for data in encoded]}}
        outputs = self._request("POST", self._model_url() + ":predict", body, timeout,
                                headers).get("outputs")
        if not isinstance(outputs, dict):
            raise errors.InvalidInputError(
                "predict() needs a signature with 'classes' and 'scores' outputs",
                code="INVALID_ARGUMENT")
        client_base.check_outputs(outputs)
        return client_base.predictions_from_rows(outputs["classes"], outputs["scores"],
                                                 outputs.get("class_ids"), len(encoded), top_k)

    def classify(self, image_inputs, *, top_k: int | None = None,
                 signature: str = client_base.DEFAULT_CLASSIFY_SIGNATURE,
                 timeout: float | None | types.EllipsisType = ...,
                 headers: Mapping[str, str] | None = None) -> list[Prediction]:
        """The :classify API: each image as an example {"image/encoded": {"b64": ...}}."""
        encoded = images.encode_all(image_inputs, max_size=self.max_size, quality=self.quality)
        body = {"signature_name": signature,
                "examples": [{client_base.EXAMPLE_IMAGE_KEY: _b64(data)} for data in encoded]}
        result = self._request("POST", self._model_url() + ":classify", body, timeout,
                               headers).get("results", [])
        return client_base.predictions_from_rows(
            [[pair[0] for pair in row] for row in result],
            [[pair[1] for pair in row] for row in result], None, len(encoded), top_k)

    def metadata(self, *, timeout: float | None | types.EllipsisType = ...,
                 headers: Mapping[str, str] | None = None) -> ModelMetadata:
        """The signatures of the version this client calls."""
        body = self._request("GET", self._model_url() + "/metadata", None, timeout, headers)
        return client_base.metadata_from_json(body)

    def status(self, *, timeout: float | None | types.EllipsisType = ...,
               headers: Mapping[str, str] | None = None) -> list[VersionStatus]:
        """The state of each version (only the client's version if it has one)."""
        body = self._request("GET", self._model_url(), None, timeout, headers)
        return client_base.status_from_json(body)

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _timed_out(error: BaseException) -> bool:
    """Whether a connection error is really a timeout (a socket timeout while sending a large
    body surfaces as "Connection aborted", TimeoutError(...))."""
    if isinstance(error, (requests.Timeout, TimeoutError)):
        return True
    return any(isinstance(arg, BaseException) and _timed_out(arg) for arg in error.args)


def _error(response: requests.Response) -> errors.ClientError:
    """The typed error for an HTTP error, with the server's {"error": ...} message."""
    try:
        message = response.json().get("error") or response.text
    except ValueError:
        message = response.text.strip() or response.reason
    return errors.from_http(response.status_code, str(message))
