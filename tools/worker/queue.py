"""The single model queue: one thread runs every forward pass, so concurrent requests never
run concurrent passes. Greedy chat jobs with the same settings waiting in the queue are merged
into one batched `generate` call.

A caller may set `REQUEST_CANCELLED` (a `threading.Event`) in its context: jobs it submits are
then skipped, not run, once the event is set (the HTTP layer sets it when the client hangs up).
"""

from __future__ import annotations

import collections
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tools.errors import AdlError


class WorkerBusyError(AdlError):
    """The queue is full; try again later."""


class WorkerStoppingError(AdlError):
    """The worker is shutting down and takes no new work."""


class RequestCancelledError(AdlError):
    """The request that queued this job was cancelled (its client disconnected)."""


REQUEST_CANCELLED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "adl_request_cancelled", default=None)


@dataclass
class ChatJob:
    """Replies to `prompts` from one side; merged with compatible jobs when greedy."""

    side: str
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    seed: int
    future: Future[list[str]] = field(default_factory=Future)
    cancelled: threading.Event | None = field(default_factory=REQUEST_CANCELLED.get)

    @property
    def merge_key(self) -> tuple[Any, ...] | None:
        # Sampling depends on the batch (seeded per batch), so only greedy jobs are merged.
        return (self.side, self.max_new_tokens) if self.temperature == 0 else None


@dataclass
class CallJob:
    """Any other model work: a function run on the model thread."""

    function: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    cancelled: threading.Event | None = field(default_factory=REQUEST_CANCELLED.get)


Job = ChatJob | CallJob
ChatRunner = Callable[[str, list[str], int, float, int], list[str]]


class ModelQueue:
    """A FIFO of model jobs served by one thread."""

    def __init__(self, run_chat: ChatRunner, *, max_pending: int = 256, max_batch_prompts: int = 64) -> None:
        self._run_chat = run_chat
        self._max_pending = max_pending
        self._max_batch_prompts = max_batch_prompts
        self._jobs: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._accepting = True
        self._stopped = False
        self.jobs_done = 0
        self.jobs_cancelled = 0
        self.batches_run = 0
        self._thread = threading.Thread(target=self._serve, name="adl-model-queue", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._condition:
            return len(self._jobs)

    def submit(self, job: Job) -> Future[Any]:
        """Queue a job; raises WorkerBusyError when full and WorkerStoppingError when closing."""
        if job.cancelled is not None and job.cancelled.is_set():
            raise RequestCancelledError("The request was cancelled before this job was queued.")
        with self._condition:
            if not self._accepting:
                raise WorkerStoppingError("The worker is shutting down and takes no new work.")
            if len(self._jobs) >= self._max_pending:
                raise WorkerBusyError(
                    f"The model queue is full ({self._max_pending} jobs waiting); retry later."
                )
            self._jobs.append(job)
            self._condition.notify()
        return job.future

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the model thread and wait for its result."""
        return self.submit(CallJob(function)).result()

    def chat(self, side: str, prompts: list[str], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Replies from one side, batched with other waiting greedy jobs."""
        return self.submit(ChatJob(side, prompts, max_new_tokens, temperature, seed)).result()

    def close(self, drain_timeout: float = 30.0) -> int:
        """Stop accepting work, finish what is queued within `drain_timeout` seconds and reject
        the rest with WorkerStoppingError. Returns the number of rejected jobs."""
        with self._condition:
            self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and (len(self) or self._busy):
            time.sleep(0.02)
        with self._condition:
            rejected = list(self._jobs)
            self._jobs.clear()
            self._stopped = True
            self._condition.notify_all()
        for job in rejected:
            job.future.set_exception(WorkerStoppingError("The worker shut down before this job ran."))
        self._thread.join(timeout=drain_timeout)
        return len(rejected)

    _busy = False

    def _take(self) -> list[Job] | None:
        with self._condition:
            while not self._jobs and not self._stopped:
                self._condition.wait()
            if self._stopped and not self._jobs:
                return None
            self._drop_cancelled_locked()
            if not self._jobs:
                return []
            first = self._jobs.popleft()
            batch: list[Job] = [first]
            if isinstance(first, ChatJob) and first.merge_key is not None:
                size = len(first.prompts)
                for job in list(self._jobs):
                    if (isinstance(job, ChatJob) and job.merge_key == first.merge_key
                            and size + len(job.prompts) <= self._max_batch_prompts):
                        self._jobs.remove(job)
                        batch.append(job)
                        size += len(job.prompts)
            self._busy = True
            return batch

    def drop_cancelled(self) -> None:
        """Reject now every queued job whose request was cancelled (they would be skipped)."""
        with self._condition:
            self._drop_cancelled_locked()

    def _drop_cancelled_locked(self) -> None:
        for job in [j for j in self._jobs if j.cancelled is not None and j.cancelled.is_set()]:
            self._jobs.remove(job)
            self.jobs_cancelled += 1
            job.future.set_exception(RequestCancelledError("The request was cancelled (its "
                                                           "client disconnected) before this job ran."))

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            try:
                self._run_batch(batch)
            finally:
                self._busy = False
                self.batches_run += 1
                self.jobs_done += len(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        first = batch[0]
        if isinstance(first, CallJob):
            _settle(first.future, first.function)
            return
        chats = [job for job in batch if isinstance(job, ChatJob)]
        prompts = [p for job in chats for p in job.prompts]
        try:
            replies = self._run_chat(first.side, prompts, first.max_new_tokens, first.temperature, first.seed)
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for job in chats:
                job.future.set_exception(exc)
            return
        start = 0
        for job in chats:
            job.future.set_result(replies[start : start + len(job.prompts)])
            start += len(job.prompts)


def _settle(future: Future[Any], function: Callable[[], Any]) -> None:
    try:
        future.set_result(function())
    except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
        future.set_exception(exc)
