"""The deadline of the request being handled: set once by a front end, read by the model run.

The gRPC front end takes the call's deadline, the REST one --rest_api_timeout_in_ms; the
signature run (and a batching queue) gets what is left, as TF Serving passes the deadline
to Session::Run as RunOptions.timeout_in_ms.

    with deadlines.request_deadline(context.time_remaining()):
        ...
        outputs = servable.run(signature_name, inputs, timeout=deadlines.remaining())
"""

from __future__ import annotations

import contextlib
import contextvars
import time

import grpc

from serving.errors import ServingError

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline",
                                                                        default=None)


def deadline_exceeded(message: str = "Deadline Exceeded") -> ServingError:
    """DEADLINE_EXCEEDED, worded as gRPC words a call whose deadline passed."""
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


@contextlib.contextmanager
def request_deadline(seconds: float | None):
    """Bounds the model work of the requests run inside (gRPC deadline, REST timeout).

    A request whose time is up before it runs fails with DEADLINE_EXCEEDED, also while it
    waits in a batching queue (TF Serving passes the deadline to the session the same way).

    Args:
      seconds: the time the request has from now; None for no deadline.
    """
    token = _DEADLINE.set(time.monotonic() + seconds if seconds is not None else None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left to the current request's deadline, or None when it has none.

    Raises:
      ServingError: DEADLINE_EXCEEDED, the deadline has passed.
    """
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise deadline_exceeded()
    return left
