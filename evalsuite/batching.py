"""Micro-batching for the reward server: concurrent requests merged into one batched ``score()``.

Why: GRPO rollouts arrive as many small requests; scoring them one by one wastes the batched forward
every reward is built around. Independent of the HTTP stack: requests hand in samples and are told
when their slice of the output is ready.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evalsuite.reward import Reward, RewardOutput
from evalsuite.sample import Sample

log = logging.getLogger(__name__)


@dataclass
class Job:
    samples: list[Sample]
    arrived: float = field(default_factory=time.monotonic)
    notify: Callable[[], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    output: RewardOutput | None = None
    error: str | None = None

    def finish(self) -> None:
        """Mark the job answered and wake whoever waits for it (a thread or an event loop)."""
        self.done.set()
        if self.notify is not None:
            with contextlib.suppress(RuntimeError):  # the waiting event loop is already closed
                self.notify()


_STOP = object()


class MicroBatcher:
    """One worker thread per reward: jobs arriving within ``max_wait_s`` of the oldest waiting job are
    merged, up to ``max_batch`` samples, into one ``score()`` call whose output is split back.

    A job is never split, so a job larger than ``max_batch`` is scored alone (``max_batch=1`` turns
    merging off). Per-group rewards are never merged: two requests with the same prompt would
    otherwise become one GRPO group. Merging is invisible in the numbers up to the reward's batch
    invariance, which the shared reward tester checks. Only this thread calls ``reward.score``, so
    rewards need not be thread-safe.
    """

    def __init__(self, reward: Reward, *, max_batch: int, max_wait_s: float, label: str) -> None:
        self.reward = reward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.label = label
        self.merge = max_batch > 1 and not reward.per_group
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"evalsuite-batcher-{label}", daemon=True)
        self._lock = threading.Lock()
        self._stopped = False
        self.stats = {"requests": 0, "samples": 0, "score_calls": 0, "largest_batch": 0, "failures": 0}

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def submit(self, samples: list[Sample], notify: Callable[[], None] | None = None) -> Job:
        """Queue ``samples``; ``notify`` is called from the worker thread once the job is answered."""
        job = Job(samples, notify=notify)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the reward server is shutting down")
            self.stats["requests"] += 1
            self.stats["samples"] += len(samples)
            self._queue.put(job)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Score what is queued, then end the worker."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        carry: Job | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            if first is _STOP:
                return
            batch, carry, stop = self._gather(first)
            try:
                self._run(batch)
            except BaseException as e:  # never leave a handler waiting forever
                log.exception("reward %s: batch failed unexpectedly", self.label)
                for job in batch:
                    job.error = job.error or f"internal error: {type(e).__name__}: {e}"
                    job.finish()
            if stop:
                return

    def _gather(self, first: Job) -> tuple[list[Job], Job | None, bool]:
        batch, size = [first], len(first.samples)
        if not self.merge:
            return batch, None, False
        deadline = first.arrived + self.max_wait_s
        while size < self.max_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, None, True
            if size + len(job.samples) > self.max_batch:
                return batch, job, False
            batch.append(job)
            size += len(job.samples)
        return batch, None, False

    def _run(self, batch: list[Job]) -> None:
        samples = [s for job in batch for s in job.samples]
        with self._lock:
            self.stats["score_calls"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(samples))
        try:
            out = self.reward.score(samples)
            if len(out) != len(samples):
                raise RuntimeError(f"score() returned {len(out)} results for {len(samples)} samples")
        except Exception as e:
            if len(batch) > 1:  # find the request that breaks the reward; the others still get answers
                for job in batch:
                    self._run([job])
                return
            with self._lock:
                self.stats["failures"] += 1
            log.warning("reward %s failed on a request: %s: %s", self.label, type(e).__name__, e)
            batch[0].error = f"reward {self.label!r} failed: {type(e).__name__}: {e}"
            batch[0].finish()
            return
        start = 0
        for job in batch:
            stop = start + len(job.samples)
            job.output = slice_output(out, start, stop)
            job.finish()
            start = stop


def slice_output(out: RewardOutput, start: int, stop: int) -> RewardOutput:
    """Samples ``start:stop`` of ``out``, components included."""
    return RewardOutput(
        out.name, out.scores[start:stop], out.applicable[start:stop], out.details[start:stop],
        out.errors[start:stop], {k: slice_output(v, start, stop) for k, v in out.components.items()},
    )
