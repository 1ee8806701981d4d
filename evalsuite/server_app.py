"""The reward server's HTTP layer: a Starlette app on uvicorn (the optional ``server`` extra).

Why this stack: HTTP/1.1 parsing, keep-alive and graceful shutdown come from maintained code (uvicorn
on h11) instead of ``http.server``, and requests are coroutines, so a slow or stalled client holds a
socket, not a thread. Work that takes CPU (JSON, base64 and PNG decoding, encoding the reply) runs in
Starlette's thread pool; scoring runs in the reward's micro-batcher thread (``evalsuite.batching``).

Refused with a 4xx for the whole request (the client is broken, not the data): a body that is not
JSON or not the wire shape, invalid base64, a malformed request line or header (400); a body that
stops arriving for ``read_timeout_s`` (408); no Content-Length (411); a Content-Length over
``max_body_bytes`` (413, answered at once without reading the body); a non-JSON Content-Type (415);
an unknown reward or path (404); the wrong method (405).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from evalsuite.reward import RewardOutput
from evalsuite.sample import Sample
from evalsuite.wire import PROTOCOL, PayloadError, decode_samples, dumps, encode_output, loads


class RewardServer(Protocol):
    """What the HTTP layer needs of ``evalsuite.server.RewardServer`` (which builds this app)."""

    rewards: Mapping[str, Any]
    max_body_bytes: int
    read_timeout_s: float

    def health(self) -> dict[str, Any]: ...
    def info(self, name: str) -> dict[str, Any]: ...
    def submit(self, name: str, samples: list[Sample], notify: Callable[[], None]) -> Any: ...


log = logging.getLogger(__name__)

# After a 413, uvicorn reads and drops a declared body up to this size so that the client, still
# sending, gets to read the answer; a larger one has its connection closed right after the answer.
DRAIN_LIMIT = 1024 * 1024 * 1024
JSON_TYPES = ("application/json", "text/json")
_CLOSE = {"Connection": "close"}


class HTTPError(Exception):
    """An answer other than 200, with its JSON error message."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def json_bytes_response(status: int, data: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(data, status, headers=dict(headers or {}), media_type="application/json")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_bytes_response(status, dumps({"error": message, "status": status}), headers)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refusing a missing or oversized Content-Length before reading any of it and
    answering 408 when the client stops sending for ``timeout`` seconds."""
    if request.headers.get("transfer-encoding"):
        raise HTTPError(411, "chunked bodies are not supported; send a Content-Length")
    raw = request.headers.get("content-length")
    if raw is None:
        raise HTTPError(411, "a Content-Length header is required")
    try:
        length = int(raw)
        if length < 0:
            raise ValueError
    except ValueError:
        raise HTTPError(400, f"bad Content-Length {raw!r}") from None
    if length > limit:
        raise HTTPError(413, f"body of {length} bytes exceeds this server's limit of {limit} bytes "
                             f"(max_body_bytes); send fewer or smaller images per request",
                        _CLOSE if length > DRAIN_LIMIT else None)
    chunks: list[bytes] = []
    got = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"request body stalled: {got} of {length} bytes arrived, then nothing "
                                 f"for {timeout:g} s (read_timeout_s)", _CLOSE) from None
        if message["type"] == "http.disconnect":
            raise HTTPError(400, f"client went away after {got} of {length} bytes", _CLOSE)
        chunk = message.get("body", b"")
        chunks.append(chunk)
        got += len(chunk)
        if not message.get("more_body", False):
            break
    if got != length:
        raise HTTPError(400, f"body ended after {got} of {length} bytes", _CLOSE)
    return b"".join(chunks)


def parse_samples(body: bytes) -> list[Sample]:
    """Samples of a ``/score`` body (CPU work: runs in the thread pool)."""
    try:
        payload = loads(body)
    except (ValueError, RecursionError) as e:
        raise HTTPError(400, f"body is not valid JSON: {e}") from None
    try:
        return decode_samples(payload)
    except PayloadError as e:
        raise HTTPError(400, str(e)) from None


async def wait_for_output(server: RewardServer, name: str, samples: list[Sample]) -> RewardOutput:
    """Hand ``samples`` to the reward's micro-batcher and wait, without a thread, for their slice."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()

    def wake() -> None:
        loop.call_soon_threadsafe(lambda: answered.done() or answered.set_result(None))

    try:
        job = server.submit(name, samples, wake)
    except RuntimeError as e:  # shutting down
        raise HTTPError(503, str(e)) from None
    await answered
    if job.error is not None or job.output is None:
        raise HTTPError(500, job.error or "no result")
    return job.output


def build_app(server: RewardServer) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app serving ``server``'s rewards."""

    def reward_name(request: Request) -> str:
        name = request.path_params["name"]
        if name not in server.rewards:
            served = ", ".join(server.rewards)
            raise HTTPError(404, f"no reward named {name!r} on this server; serving: {served}")
        return name

    async def health(request: Request) -> Response:
        return json_bytes_response(200, dumps(server.health()))

    async def rewards(request: Request) -> Response:
        body = {"protocol": PROTOCOL, "rewards": {n: server.info(n) for n in server.rewards}}
        return json_bytes_response(200, dumps(body))

    async def reward(request: Request) -> Response:
        return json_bytes_response(200, dumps(server.info(reward_name(request))))

    async def score(request: Request) -> Response:
        name = reward_name(request)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES:
            raise HTTPError(415, f"Content-Type must be application/json, got {ctype!r}")
        body = await read_body(request, server.max_body_bytes, server.read_timeout_s)
        samples = await run_in_threadpool(parse_samples, body)
        out = await wait_for_output(server, name, samples)
        return json_bytes_response(200, await run_in_threadpool(lambda: dumps(encode_output(out))))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"no such endpoint {request.url.path!r}; "
                                   f"try GET /health, GET /rewards, POST /score/<name>")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        path, method = request.url.path, request.method
        allow = "POST" if path.startswith("/score/") else "GET"
        if method in ("GET", "POST"):
            message = f"use {allow} for {'/score/<name>' if allow == 'POST' else path}"
        else:
            message = f"method {method} not allowed"
        return error_response(405, message, {"Allow": allow})

    routes = [
        Route("/health", _guarded(health), methods=["GET"]),
        Route("/rewards", _guarded(rewards), methods=["GET"]),
        Route("/rewards/{name}", _guarded(reward), methods=["GET"]),
        Route("/score/{name}", _guarded(score), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

    async def strip_slash(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # "/health/" is "/health", as it always was
            scope = {**scope, "path": scope["path"].rstrip("/") or "/"}
        await app(scope, receive, send)

    return strip_slash


def _guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every failure becomes a JSON error answer; nothing reaches uvicorn's plain-text 500."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPError as e:
            return error_response(e.status, e.message, e.headers)
        except Exception as e:
            log.exception("reward server: unexpected error on %s %s", request.method, request.url.path)
            return error_response(500, f"internal error: {type(e).__name__}: {e}")

    return run


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: a connection that is silent for ``timeout_keep_alive`` while no
    request is in progress is closed (not only between requests), and a request h11 cannot parse gets
    the server's JSON error saying what is wrong instead of a bare text line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parse_error = "invalid HTTP request"
        next_event = self.conn.next_event

        def checked_next_event() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as e:
                self._parse_error = f"invalid HTTP request: {e}"
                raise

        self.conn.next_event = checked_next_event  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is None or self.cycle.response_complete:  # still waiting for a whole request
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)

    def send_400_response(self, msg: str) -> None:
        body = dumps({"error": self._parse_error, "status": 400})
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def make_uvicorn(server: RewardServer) -> uvicorn.Server:
    """A uvicorn server for ``server`` (run it with ``.run(sockets=[...])`` on the bound socket)."""
    config = uvicorn.Config(
        build_app(server), http=_Protocol, ws="none", lifespan="off", interface="asgi3",
        log_config=None, access_log=False, proxy_headers=False, server_header=False,
        headers=[("server", f"evalsuite-reward-server/{PROTOCOL}")],
        timeout_keep_alive=server.read_timeout_s,  # type: ignore[arg-type]
    )
    return uvicorn.Server(config)
