"""The one retry policy for provider calls (tenacity).

Retried: rate limits (429), server errors (5xx), timeouts and connection errors, i.e. every
`ProviderError` a backend marks `retryable`. Waits honour the server's Retry-After when given,
otherwise exponential backoff with jitter. Authentication and validation errors are not
retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, Field
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from agent.errors import ProviderError

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryPolicy(BaseModel):
    max_attempts: int = Field(6, ge=1)
    initial_wait_s: float = Field(1.0, ge=0)
    max_wait_s: float = Field(60.0, ge=0)
    jitter_s: float = Field(1.0, ge=0)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def with_retries(call: Callable[[], T], policy: RetryPolicy | None = None) -> tuple[T, int]:
    """Run `call` under the retry policy; returns (result, attempts). The last error is raised
    as a ProviderError that says how many attempts were made."""
    policy = policy or RetryPolicy()
    backoff = wait_exponential_jitter(initial=policy.initial_wait_s, max=policy.max_wait_s,
                                      jitter=policy.jitter_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_wait_s)
        return backoff(state)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("provider call failed (%s); retry %d in %.1f s", exc, state.attempt_number,
                    state.next_action.sleep if state.next_action else 0)

    retrying = Retrying(stop=stop_after_attempt(policy.max_attempts), wait=wait,
                        retry=retry_if_exception(_is_retryable), reraise=True,
                        before_sleep=before_sleep)
    attempts = 0
    try:
        for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                result = call()
        return result, attempts
    except ProviderError as exc:
        if exc.retryable:
            raise ProviderError(f"{exc} (gave up after {attempts} attempts)", retryable=False,
                                status=exc.status) from exc
        raise
