"""One typed error for every failure a request can meet, with TF Serving's status codes.

The REST mapping follows tensorflow_serving/model_servers/http_server.cc (ToHTTPStatusCode).
"""

from __future__ import annotations

import re

import grpc

# tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,  # CLIENT_CLOSED_REQUEST
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers for a gRPC/absl status code."""
    return _HTTP_STATUS.get(code, 500)


def code_from_number(number: int) -> grpc.StatusCode:
    """grpc.StatusCode for a canonical code number (tf.errors.OpError.error_code)."""
    return _BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)


def clean_op_message(message: str) -> str:
    """An eager op error's message as a session would word it (TF Serving runs sessions).

    Drops TF2's Python-side wrapping: the "Graph execution error: ... Detected at node ...
    <stack traces unavailable>" preamble and the trailing " [Op:__inference_...]".
    """
    message = re.sub(r"^Graph execution error:\s*", "", message)
    message = re.sub(r"^Detected at node .*? defined at \(most recent call last\):\n"
                     r"(?:.*\n)*?<stack traces unavailable>\n", "", message)
    message = re.sub(r"^Detected at node .*?\n(?:  .*\n)*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message).strip()


class ServingError(Exception):
    """A request or model failure with the status code TF Serving would answer.

    Attributes:
      code: the grpc.StatusCode.
      message: the text sent to the client (gRPC details, REST {"error": ...}).
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        """The canonical name, e.g. INVALID_ARGUMENT (the metric label TF Serving uses)."""
        return self.code.name

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_exception(cls, error: BaseException) -> ServingError:
        """Maps any exception raised while serving to a ServingError.

        TensorFlow op errors keep their own code and message; anything else is INTERNAL.
        """
        if isinstance(error, ServingError):
            return error
        import tensorflow as tf  # Lazy: no TensorFlow import for the error type alone.

        if isinstance(error, tf.errors.OpError):
            return cls(code_from_number(error.error_code), clean_op_message(error.message))
        return cls(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


# Error messages echo what clients sent (names, JSON values); TF Serving echoes it whole.
MAX_MESSAGE_CHARS = 4096


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """message, or its start and end around a note of how much was cut."""
    if len(message) <= limit:
        return message
    head, tail = limit * 3 // 4, limit // 4
    return (f"{message[:head]}...({len(message) - head - tail} characters cut)..."
            f"{message[len(message) - tail:]}")


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)
