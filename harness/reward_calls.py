"""How the trainers call rewards: per-call timeout, bounded retry, and scoring that overlaps sampling.

``guarded_score`` runs one reward's ``score`` with the configured timeout and retries; a reward that keeps
raising or timing out raises ``RewardFailedError`` naming the reward and its last error. A call in which
every sample errored is retried too (it may be transient), then kept: one prompt's group can fail on its
own (bad metadata), and a per-sample error keeps its meaning (that value is NaN, the rest counts). Only
when a component errored on every sample of the whole step does ``ChunkScorer.collect`` stop the run, so
it never trains on a component that silently became all-NaN (= 0).

``ChunkScorer`` takes a step's chunks in order: serially it scores each chunk when it is submitted; with
``overlap`` a single worker thread scores chunk k while the caller samples chunk k+1. Sampling draws its
noise from explicit per-row seeds and the rewards run one chunk after the other on one thread, in the same
order as serially, so results are identical: only the wall-clock time changes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from evalsuite.errors import (
    ConfigError,
    EvalsuiteError,
    MissingBackendError,
    ModelLoadError,
    PluginError,
    UnknownNameError,
)
from evalsuite.reward import Reward, RewardOutput
from evalsuite.sample import Sample

# setup errors: retrying cannot fix them, so they surface at once, unchanged
NOT_RETRIED = (ConfigError, MissingBackendError, ModelLoadError, PluginError, UnknownNameError)


class RewardFailedError(EvalsuiteError, RuntimeError):
    """A reward failed as a whole (raised, timed out, or errored on every sample) after its retries."""


class RewardTimeoutError(EvalsuiteError, TimeoutError):
    """One reward call ran past ``rewards.timeout_s``; ``finished`` is set once the call returns."""

    def __init__(self, message: str, finished: threading.Event) -> None:
        super().__init__(message)
        self.finished = finished


def check_call_settings(timeout_s: float | None, retries: int, backoff_s: float, where: str) -> None:
    """Refuse timeout/retry settings that cannot work, naming their config keys."""
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(f"{where}.timeout_s must be > 0 seconds or null, got {timeout_s}")
    if retries < 0:
        raise ConfigError(f"{where}.retries must be >= 0, got {retries}")
    if backoff_s < 0:
        raise ConfigError(f"{where}.retry_backoff_s must be >= 0, got {backoff_s}")


def _in_thread(fn: Callable[[], Any], name: str) -> tuple[threading.Event, dict[str, Any]]:
    """Start ``fn`` on a daemon thread (a hung reward must not keep the process alive at exit) with the
    caller's grad mode (thread-local in torch); returns (finished, {"result" | "error": ...})."""
    done, box = threading.Event(), {}
    grad = torch.is_grad_enabled()

    def run() -> None:
        try:
            with torch.set_grad_enabled(grad):
                box["result"] = fn()
        except BaseException as e:  # handed to the caller, which decides
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done, box


def _attempt(reward: Reward, samples: Sequence[Sample], timeout_s: float | None) -> RewardOutput:
    """One ``score`` call; with a timeout it runs on its own thread (Python cannot interrupt a call)."""
    if timeout_s is None:
        return reward.score(samples)
    done, box = _in_thread(lambda: reward.score(samples), f"reward-{reward.name}")
    if not done.wait(timeout_s):
        raise RewardTimeoutError(f"timed out after {timeout_s:g} s", done)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _all_errored(out: RewardOutput) -> str | None:
    """The first error when every sample of a non-empty call errored, else None."""
    if out.errors and all(e is not None for e in out.errors):
        return out.errors[0]
    return None


def guarded_score(
    name: str,
    reward: Reward,
    samples: Sequence[Sample],
    *,
    timeout_s: float | None,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> RewardOutput:
    """``reward.score(samples)`` with up to ``retries`` retries (waiting ``backoff_s``·2^attempt first).

    A timed-out call cannot be stopped; as a reward object is used from one thread at a time, it is retried
    only if the stuck call has returned by the end of the backoff, else the run stops at once."""
    last = ""
    stuck: threading.Event | None = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        if stuck is not None and not stuck.is_set():
            raise RewardFailedError(
                f"reward {name!r} {last} and is still running, so it is not retried (a reward object is "
                f"used from one thread at a time); the run stops (rewards.timeout_s, rewards.retries)"
            )
        try:
            out = _attempt(reward, samples, timeout_s)
        except NOT_RETRIED:
            raise
        except RewardTimeoutError as e:
            last, stuck = str(e), e.finished
            continue
        except Exception as e:
            last, stuck = f"raised {type(e).__name__}: {e}", None
            continue
        if _all_errored(out) is None or attempt == retries:
            return out  # an all-errored call, once retried, is judged over the whole step (collect)
    raise RewardFailedError(
        f"reward {name!r} failed {retries + 1} time(s) in a row; last error: {last}. The run stops "
        "rather than train on a reward that is not there (rewards.retries, rewards.timeout_s)"
    )


# ------------------------------------------------------------------------------------ chunked scoring


def chunk_rows(n_groups: int, group_size: int, chunk_groups: int | None) -> list[list[int]]:
    """Sample indexes of each chunk: consecutive whole groups (per-group rewards never see a split)."""
    per = n_groups if chunk_groups is None else max(1, min(chunk_groups, n_groups))
    return [list(range(g * group_size, min(g + per, n_groups) * group_size)) for g in range(0, n_groups, per)]


class ChunkScorer:
    """Scores a step's chunks in submission order with ``score(samples, extra)`` → (raw, details);
    ``collect`` concatenates them. With ``overlap`` one worker thread scores while the caller samples.
    Use as a context manager: leaving it ends the worker."""

    def __init__(self, score: Callable[[list[Sample], list[Any]], tuple[dict, list]], overlap: bool) -> None:
        self._score = score
        self._futures: list[Future] = []
        self._jobs: queue.SimpleQueue | None = None
        self.wait_s = 0.0  # time the caller spent waiting for rewards in collect()
        if overlap:
            self._jobs = queue.SimpleQueue()
            _in_thread(self._work, "reward-chunks")

    def __enter__(self) -> ChunkScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._jobs is not None:
            self._jobs.put(None)

    def _work(self) -> None:
        """The worker: chunks one after the other (a reward object sees one thread at a time); after a
        failure the remaining chunks fail with the same error instead of being scored."""
        failure: BaseException | None = None
        assert self._jobs is not None
        while (job := self._jobs.get()) is not None:
            fut, samples, extra = job
            if failure is not None:
                fut.set_exception(failure)
                continue
            try:
                fut.set_result(self._score(samples, extra))
            except BaseException as e:
                failure = e
                fut.set_exception(e)

    def submit(self, samples: list[Sample], extra: list[Any]) -> None:
        """Score a chunk now (serial) or queue it (overlap); a chunk that already failed raises here, so
        the step stops before more is sampled."""
        fut: Future = Future()
        if self._jobs is None:
            fut.set_result(self._score(samples, extra))
        else:
            for earlier in self._futures:
                if earlier.done() and earlier.exception() is not None:
                    raise earlier.exception()  # type: ignore[misc]
            self._jobs.put((fut, samples, extra))
        self._futures.append(fut)

    def collect(self) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Every chunk's (raw, details), concatenated in submission order."""
        t0 = time.perf_counter()
        parts = [fut.result() for fut in self._futures]
        self.wait_s = time.perf_counter() - t0
        raw = {name: torch.cat([p[0][name] for p in parts]) for name in parts[0][0]}
        details = [d for p in parts for d in p[1]]
        for name in raw:
            errors = [d.get(f"{name}.error") for d in details]
            if errors and all(e is not None for e in errors):
                raise RewardFailedError(
                    f"reward {name!r} failed on all {len(errors)} samples of the step (first: {errors[0]}). "
                    "The run stops rather than train on a reward that is not there"
                )
        return raw, details
