"""Typed errors shared by the gRPC and REST clients.

Both protocols raise the same classes, carrying the server's message, so application code
handles failures once:

    from clients import GrpcClient, errors

    client = GrpcClient("localhost:8500", model="effnet")
    try:
        predictions = client.predict(["cat.jpg"])
    except errors.InvalidInputError as error:  # A bad image: do not retry.
        print("rejected:", error.message)
    except errors.UnavailableError:            # Overloaded or down: retry later.
        ...

Mapping (TF Serving's own status-to-HTTP table, http_server.cc): INVALID_ARGUMENT and
FAILED_PRECONDITION are 400 over REST, so both become InvalidInputError; NOT_FOUND 404;
UNAVAILABLE 503 and RESOURCE_EXHAUSTED 429 are both "try again later" (UnavailableError),
but 413 (a body over the server's limit) is InvalidInputError: resending cannot help;
DEADLINE_EXCEEDED 504 (also a client-side timeout); UNIMPLEMENTED 501; the rest
ServerError.
"""

from __future__ import annotations

# gRPC / absl canonical codes (google.rpc.Code): the numbers are the protocol's.
CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

# TF Serving's REST status mapping, inverted; codes it does not produce map to their
# closest canonical name.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


class ClientError(Exception):
    """Any failed call. `code` is the canonical status name ("INVALID_ARGUMENT", ...).

    Attributes:
        code: canonical status name, from the gRPC status or the HTTP status.
        message: the server's error message (or the transport's, when no server answered).
        http_status: the HTTP status for REST calls, else None.
    """

    def __init__(self, message: str, *, code: str = "UNKNOWN", http_status: int | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.http_status = http_status


class InvalidInputError(ClientError):
    """The server rejected the request (bad image, unknown input/signature/label): no retry."""


class NotFoundError(ClientError):
    """Unknown model or version."""


class UnavailableError(ClientError):
    """Server down, unreachable, starting up, or overloaded (UNAVAILABLE,
    RESOURCE_EXHAUSTED): safe to retry with backoff."""


class DeadlineExceededError(ClientError):
    """The call's deadline passed before an answer (on the client or on the server)."""


class PermissionDeniedError(ClientError):
    """UNAUTHENTICATED or PERMISSION_DENIED (missing or wrong credentials)."""


class UnimplementedError(ClientError):
    """The server does not have this API (e.g. an old server, or a REST-only proxy)."""


class ServerError(ClientError):
    """INTERNAL, UNKNOWN and anything else the server reports as its own failure."""


_CLASSES = {
    "INVALID_ARGUMENT": InvalidInputError,
    "FAILED_PRECONDITION": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "RESOURCE_EXHAUSTED": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "UNAUTHENTICATED": PermissionDeniedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNIMPLEMENTED": UnimplementedError,
}


def from_code(code: str | int, message: str, *, http_status: int | None = None) -> ClientError:
    """The typed error for a canonical code (name or number) and the server's message."""
    name = CODE_NAMES.get(code, "UNKNOWN") if isinstance(code, int) else code
    cls = _CLASSES.get(name, ServerError)
    return cls(message, code=name, http_status=http_status)


def from_http(status: int, message: str) -> ClientError:
    """The typed error for an HTTP error status and the server's {"error": ...} message."""
    name = _HTTP_CODES.get(status)
    if status == 413:
        # Payload Too Large: the body exceeds the server's limit, so resending it can never
        # succeed (as gRPC's own "larger than max" in grpc_client.error_from_rpc).
        return InvalidInputError(message, code=name, http_status=status)
    if name is None:
        name = "INVALID_ARGUMENT" if 400 <= status < 500 else "INTERNAL"
    return from_code(name, message, http_status=status)


def is_retryable(error: BaseException) -> bool:
    """Only "try again later" errors: retrying a rejected input can never succeed."""
    return isinstance(error, UnavailableError)
