"""Dynamic batching: concurrent requests share forward passes, and the model never runs on the event loop.

Requests are queued as :class:`Job`s. The batcher takes the first job, waits up to ``max_wait_s`` for
more, and sends up to ``max_batch`` (image, expression) pairs to the model at once, in one worker thread
(the model is not re-entrant; the event loop keeps answering ``/healthz`` and accepting requests while it
runs). Requests arriving during a forward pass queue up and form the next batch, so under load batches
fill by themselves. Jobs with different options (``explain``, thresholds) never share a call; a failing
call is retried one job at a time, so that one bad request cannot fail the others.

:meth:`DynamicBatcher.close` refuses new jobs, finishes every queued and running one, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from langground.serve.limits import ApiError


@dataclass
class Job:
    """One request's share of a batch: ``size`` (image, expression) pairs with options ``key``."""

    payload: Any
    size: int
    key: Hashable = None
    future: asyncio.Future = field(default=None, repr=False)  # type: ignore[assignment]


#: ``run(jobs) -> one result per job``; called in the worker thread with jobs of one ``key``
RunBatch = Callable[[list[Job]], list[Any]]


class DynamicBatcher:
    """Merges queued jobs into batches of at most ``max_batch`` pairs and runs them in one worker thread.

    Args:
        run: computes the results of a list of jobs sharing one key (in the worker thread).
        max_batch: pairs per batch; a single job larger than this runs alone.
        max_wait_s: how long the first job of a batch waits for others.
        on_batch: called with ``(pairs, jobs)`` for every batch run (metrics, tests).
    """

    def __init__(
        self,
        run: RunBatch,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        self.run = run
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._carry: Job | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="langground-model")
        self._closed = False
        self._task = asyncio.create_task(self._loop(), name="langground-batcher")

    async def submit(self, payload: Any, size: int, key: Hashable = None) -> Any:
        """Queue a job and wait for its result (its exception is raised here)."""
        if self._queue is None or self._closed:
            raise ApiError(503, "the server is shutting down: retry on another instance")
        job = Job(payload, max(1, int(size)), key, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def close(self) -> None:
        """Refuse new jobs, finish the queued and running ones, stop the worker thread."""
        if self._queue is None or self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)  # behind every job already queued
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------------ internals

    async def _next(self, timeout: float | None) -> Job | None:
        """The carried-over job, else the next queued one (None: the stop marker); ``timeout`` seconds at
        most (None: forever), raising ``asyncio.TimeoutError``; jobs already queued come without waiting."""
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        assert self._queue is not None
        if timeout is None:
            return await self._queue.get()
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        if timeout <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            if first is None:  # the stop marker: every job queued before it has run
                return
            batch, pairs, stop = [first], first.size, False
            deadline = loop.time() + self.max_wait_s
            while pairs < self.max_batch:
                try:
                    job = await self._next(deadline - loop.time())
                except asyncio.TimeoutError:
                    break
                if job is None:
                    stop = True
                    break
                if pairs + job.size > self.max_batch:
                    self._carry = job  # it opens the next batch
                    break
                batch.append(job)
                pairs += job.size
            await self._run_batch(loop, batch)
            if stop:
                return

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        live = [j for j in batch if not j.future.done()]  # a client that left has cancelled its future
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(sum(j.size for j in live), len(live))
        groups: dict[Hashable, list[Job]] = {}
        for job in live:
            groups.setdefault(job.key, []).append(job)
        for jobs in groups.values():
            try:
                results = await loop.run_in_executor(self._executor, self.run, jobs)
            except Exception as error:
                if len(jobs) == 1:
                    _settle(jobs[0], error=error)
                    continue
                for job in jobs:  # find the job that fails; the others still get their results
                    try:
                        (result,) = await loop.run_in_executor(self._executor, self.run, [job])
                        _settle(job, result)
                    except Exception as single_error:
                        _settle(job, error=single_error)
                continue
            for job, result in zip(jobs, results, strict=True):
                _settle(job, result)


def _settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    with contextlib.suppress(asyncio.InvalidStateError):
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
