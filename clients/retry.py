"""Retries with exponential backoff and jitter, for "try again later" errors only.

Only UnavailableError (gRPC UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP 503 / 429, connection
refused) is retried: a full batching queue or a restarting pod clears up, while an
invalid input fails the same way every time. The call's deadline covers all attempts, so
retries never make a call take longer than its timeout.

    from clients import GrpcClient, RetryPolicy

    client = GrpcClient("localhost:8500", model="effnet",
                        retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.05))
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from clients import errors

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_attempts: total attempts including the first (1 = no retries).
        initial_backoff_s: the first wait.
        max_backoff_s: the longest wait.
        multiplier: growth of the wait per attempt.
        jitter: fraction of each wait that is random (0..1): waits are drawn from
            [backoff * (1 - jitter), backoff], so clients that failed together (a server
            restart) do not all come back at the same instant.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in 0..1, got {self.jitter}")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (0 for the first retry)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** retry)
        return base * (1.0 - self.jitter * (rng or random).random())


NO_RETRY = RetryPolicy(max_attempts=1)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _wait_before_retry(error: errors.ClientError, retry: int, policy: RetryPolicy,
                      deadline: float | None) -> float:
    """Seconds to wait before retry number `retry`; re-raises error when not to retry."""
    if not errors.is_retryable(error) or retry + 1 >= policy.max_attempts:
        raise error
    wait = policy.backoff(retry)
    remaining = _remaining(deadline)
    if remaining is not None and remaining <= wait:
        raise error  # No time left for another attempt: the real error is more useful.
    return wait


def call(attempt: Callable[[float | None], T], policy: RetryPolicy,
         timeout: float | None) -> T:
    """Runs attempt(remaining_timeout) until it succeeds, fails for good, or time is up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    retry = 0
    while True:
        try:
            return attempt(_remaining(deadline))
        except errors.ClientError as error:
            time.sleep(_wait_before_retry(error, retry, policy, deadline))
            retry += 1


async def call_async(attempt: Callable[[float | None], Awaitable[T]], policy: RetryPolicy,
                     timeout: float | None) -> T:
    """call() for coroutines."""
    import asyncio  # Lazily: sync-only apps do not pay for importing asyncio.

    deadline = None if timeout is None else time.monotonic() + timeout
    retry = 0
    while True:
        try:
            return await attempt(_remaining(deadline))
        except errors.ClientError as error:
            await asyncio.sleep(_wait_before_retry(error, retry, policy, deadline))
            retry += 1
