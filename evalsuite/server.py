"""``evalsuite serve``: rewards over HTTP, with concurrent requests merged into one batched ``score()``.

Why a server: a big reward model (a 7B VLM) should load once on one GPU and be shared by many trainers
and evaluators. Concurrent requests are micro-batched (``evalsuite.batching``); the HTTP layer is
Starlette on uvicorn (``evalsuite.server_app``, the ``server`` extra); the wire format, PNG + JSON
and never pickle, is ``evalsuite.wire``, shared with the client ``evalsuite.remote``.

Endpoints (all bodies JSON, UTF-8; errors are ``{"error": message, "status": code}``):

- ``GET /health``: liveness, served names, limits and per-reward counters.
- ``GET /rewards``: every served reward's info (``describe()``, ``needs_image``…); ``GET /rewards/<name>``.
- ``POST /score/<name>`` with ``{"samples": [SAMPLE, ...]}`` → an encoded ``RewardOutput``.

There is no authentication: the server binds loopback by default and belongs there or behind a
trusted proxy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from evalsuite.batching import Job, MicroBatcher
from evalsuite.errors import ConfigError
from evalsuite.optional import require
from evalsuite.reward import Reward
from evalsuite.sample import Sample
from evalsuite.wire import (
    PROTOCOL,
    to_wire,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 5.0  # a client silent this long mid-body gets a 408; an idle connection closes
_STARTUP_TIMEOUT_S = 30.0


def require_server_stack() -> None:
    """Fail early, in one line naming the extra, when Starlette/uvicorn are not installed."""
    for module in ("uvicorn", "starlette"):
        require(module, "server", purpose="the reward server (evalsuite serve)")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so that port 0 resolves before ``start()``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are
    # TCP; with Nagle on, every keep-alive reply stalls ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)  # a burst of concurrent requests must not be refused at connect
    except OSError:
        sock.close()
        raise
    return sock


class RewardServer:
    """Serves ``{name: reward}`` on ``host:port`` (port 0: any free port; see ``url``).

    Binds in the constructor, serves after ``start()`` (which also loads the rewards), and ``close()``
    stops accepting, lets in-flight requests finish, then stops the batchers. Loopback by default:
    there is no authentication, so another host needs an explicit ``host``. ``read_timeout_s``: how
    long a connection may stay silent (mid-body: 408; between requests: closed).
    """

    def __init__(
        self,
        rewards: Mapping[str, Reward],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        if not rewards:
            raise ConfigError("the reward server needs at least one reward")
        for name, reward in rewards.items():
            if not name or "/" in name or not isinstance(reward, Reward):
                raise ConfigError(f"bad reward entry {name!r}: {type(reward).__name__}")
        if max_batch < 1 or max_wait_ms < 0 or max_body_bytes < 1 or not read_timeout_s > 0:
            raise ConfigError(f"need max_batch >= 1, max_wait_ms >= 0, max_body_bytes >= 1, "
                              f"read_timeout_s > 0; got {max_batch}, {max_wait_ms}, {max_body_bytes}, "
                              f"{read_timeout_s}")
        require_server_stack()
        self.rewards = dict(rewards)
        self.max_batch, self.max_wait_ms, self.max_body_bytes = max_batch, max_wait_ms, max_body_bytes
        self.read_timeout_s = read_timeout_s
        shared: dict[int, MicroBatcher] = {}  # one worker per reward object, even if served twice
        self._batchers = {
            name: shared.setdefault(id(r), MicroBatcher(r, max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                                                        label=name))
            for name, r in self.rewards.items()
        }
        if not is_loopback(host):
            log.warning("reward server binds to %r: reachable from other machines, with no authentication",
                        host)
        self._sock = _bind(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self._sock.getsockname()[:2]

    def start(self) -> RewardServer:
        """Load every reward, start the batchers, then serve from a background thread."""
        from evalsuite.server_app import make_uvicorn

        for reward in self.rewards.values():
            reward.load()
        for batcher in set(self._batchers.values()):
            batcher.start()
        self._uvicorn = make_uvicorn(self)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]},
                                        name="evalsuite-reward-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close(timeout=1)
                raise RuntimeError(f"the reward server at {self.url} did not start")
            time.sleep(0.005)
        log.info("serving %s at %s (max_batch=%d, max_wait_ms=%g)", ", ".join(self.rewards), self.url,
                 self.max_batch, self.max_wait_ms)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Graceful stop: no new connections, in-flight requests answered, then workers end."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.config.timeout_graceful_shutdown = timeout
            self._uvicorn.should_exit = True
            self._thread.join(timeout + 5)
        for batcher in set(self._batchers.values()):
            batcher.stop(max(timeout, 0.1))
        self._sock.close()

    def __enter__(self) -> RewardServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- used by the HTTP layer ------------------------------------------------------------------
    def submit(self, name: str, samples: list[Sample], notify: Callable[[], None]) -> Job:
        """Queue a request's samples with the reward's batcher; ``RuntimeError`` once closing."""
        if self._closing:
            raise RuntimeError("the reward server is shutting down")
        return self._batchers[name].submit(samples, notify)

    def info(self, name: str) -> dict[str, Any]:
        r = self.rewards[name]
        return to_wire({
            "name": name,
            "reward": r.name,
            "describe": r.describe(),
            "needs_image": r.needs_image,
            "needs_source_image": r.needs_source_image,
            "required_metadata": list(r.required_metadata),
            "per_group": r.per_group,
            "backend": r.backend,
            "protocol": PROTOCOL,
            "max_body_bytes": self.max_body_bytes,
        }, strict=False)

    def health(self) -> dict[str, Any]:
        return {
            "status": "closing" if self._closing else "ok",
            "protocol": PROTOCOL,
            "rewards": list(self.rewards),
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_body_bytes": self.max_body_bytes,
            "read_timeout_s": self.read_timeout_s,
            "stats": {name: dict(b.stats) for name, b in self._batchers.items()},
        }


def build_rewards(
    rewards: Mapping[str, Reward] | Sequence[str] | str,
    reward_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    common_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Reward]:
    """``{name: reward}`` from ready rewards, or from registry names (``"brightness,multi"`` or a list),
    each built with ``common_kwargs`` (device, dtype…) updated by ``reward_kwargs[name]``."""
    if isinstance(rewards, Mapping):
        return dict(rewards)
    from evalsuite.registry import get_reward

    names = [n.strip() for n in rewards.split(",")] if isinstance(rewards, str) else [str(n) for n in rewards]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"give each reward to serve once, got {names}")
    extra = dict(reward_kwargs or {})
    unused = sorted(set(extra) - set(names))
    if unused:
        raise ConfigError(f"reward_kwargs for rewards that are not served: {unused}")
    return {n: get_reward(n, **{**dict(common_kwargs or {}), **dict(extra.get(n, {}))}) for n in names}


def serve(
    rewards: Mapping[str, Reward] | Sequence[str] | str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    reward_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    common_kwargs: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[RewardServer], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down gracefully. Returns 0.

    Rewards are built and loaded before the port opens, so a missing backend fails at startup; a
    missing ``server`` extra fails before any reward is built.
    """
    require_server_stack()
    server = RewardServer(build_rewards(rewards, reward_kwargs, common_kwargs), host, port,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes,
                          read_timeout_s=read_timeout_s)
    stop = stop or threading.Event()
    try:
        server.start()
        with _stop_on_signals(stop):
            if on_ready is not None:
                on_ready(server)
            while not stop.wait(0.2):
                pass
            log.info("reward server at %s: shutting down", server.url)
    finally:
        server.close()
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
