"""A reward scored by an ``evalsuite serve`` process: ``RemoteReward(url, name)`` is a drop-in ``Reward``.

It returns the same ``RewardOutput`` the served reward returns in-process (scores bit-exact,
``applicable``, ``errors``, ``details`` and ``components``), so code that takes a ``Reward`` does not
change. Images are turned into RGB pixels here, with the same ``to_rgb`` the reward itself uses, and
sent as PNG (lossless); an image that cannot be read travels as its error message, which the server
hands back to the reward, so the per-sample error text is the one in-process gives too.

Differences from in-process, by necessity: ``details`` come back JSON-shaped (numpy values as Python
numbers and lists, unknown objects as their ``repr``); a sample whose metadata cannot be sent as JSON
gets a per-sample error here instead of being scored. Requests are packed by ``batch_size`` samples
and by the server's ``max_body_bytes``; per-group rewards never have a group split across requests.
Each calling thread keeps one keep-alive connection. The wire format is ``evalsuite.wire``; this
client needs no HTTP stack beyond the standard library (not the ``server`` extra).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import select
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

from evalsuite.errors import ConfigError, EvalsuiteError, UnknownNameError
from evalsuite.images import BadImageError, to_rgb
from evalsuite.reward import Reward, RewardOutput
from evalsuite.sample import Sample
from evalsuite.wire import PROTOCOL, decode_output, dumps, encode_png, loads, to_wire

__all__ = ["RemoteReward", "RemoteRewardError", "decode_output", "encode_png", "merge_outputs"]

_ENVELOPE = len(b'{"samples":[]}')


class RemoteRewardError(EvalsuiteError, RuntimeError):
    """The reward server could not be reached or refused a request; the message says which and why."""


class RemoteReward(Reward):
    """The reward served as ``name`` at ``url`` (e.g. ``http://127.0.0.1:8765``).

    ``batch_size``: at most this many samples per HTTP request (the server merges concurrent
    requests again). ``compress_level``: zlib level of the PNGs; lossless at any level, 1 is a good
    speed/size trade-off. ``workers``: threads encoding PNGs (default: up to 8 CPU cores).
    Connecting is lazy, like model loading: ``load()`` (or the first ``score()``) asks the server.
    """

    name = "remote"
    backend = "remote"
    needs_image = False  # the served reward's real attributes are read from the server in load()

    def __init__(
        self,
        url: str,
        name: str,
        *,
        batch_size: int = 64,
        timeout: float = 600.0,
        compress_level: int = 1,
        workers: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size)
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"remote reward url must be http(s)://HOST:PORT, got {url!r}")
        if not 0 <= compress_level <= 9:
            raise ConfigError(f"compress_level must be in 0..9, got {compress_level}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._parts = parts
        self._connections = _Connections(parts, timeout)
        self.name = name
        self.timeout = timeout
        self.compress_level = compress_level
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        self.info: dict[str, Any] = {}

    # -- Reward API ------------------------------------------------------------------------------
    def _load(self) -> None:
        status, body = self._request("GET", f"/rewards/{quote(self.name, safe='')}")
        if status == 404:
            raise UnknownNameError(f"{self.url}: {body.get('error', 'no reward named ' + repr(self.name))}")
        self._raise_for(status, body)
        if body.get("protocol") != PROTOCOL:
            raise RemoteRewardError(
                f"{self.url} speaks protocol {body.get('protocol')!r}, this client {PROTOCOL}")
        self.info = body
        self.needs_image = bool(body["needs_image"])
        self.needs_source_image = bool(body["needs_source_image"])
        self.required_metadata = tuple(body["required_metadata"])
        self.per_group = bool(body["per_group"])
        self.backend = str(body["backend"])
        describe = body.get("describe") or {}
        self.model_id, self.revision = describe.get("model"), describe.get("revision")

    def describe(self) -> dict[str, Any]:
        """The served reward's own ``describe()``, plus where it was served from."""
        self.load()
        return {**self.info["describe"], "remote": {"url": self.url, "name": self.name}}

    def score(self, samples: Sequence[Sample]) -> RewardOutput:
        self.load()
        samples = list(samples)
        pngs = self._encode_images(samples)
        encoded: list[bytes | None] = [None] * len(samples)
        local_errors: dict[int, str] = {}
        for i, s in enumerate(samples):
            try:
                encoded[i] = self._encode(s, pngs)
            except _LocalError as e:
                local_errors[i] = str(e)
        requests = self._pack(samples, encoded)
        if not samples:
            requests = [[]]  # the server still tells us the output's name and components
        pieces = [(idx, self._post(idx, encoded)) for idx in requests]
        return merge_outputs(len(samples), pieces, local_errors, self.info.get("reward", self.name))

    # -- encoding --------------------------------------------------------------------------------
    def _encode_images(self, samples: list[Any]) -> dict[int, bytes | None]:
        """Base64 PNG of every distinct image object (``None`` where it cannot be read), by ``id``.

        Each object is encoded once, so a source image shared by a whole GRPO group costs one
        encode, and no image object is ever touched by two threads (lazy PIL loading is not
        thread-safe). Threads help because ``zlib.compress`` releases the GIL.
        """
        distinct: dict[int, Any] = {}
        for s in samples:
            if isinstance(s, Sample):
                for image in (s.image, s.source_image):
                    if image is not None:
                        distinct.setdefault(id(image), image)
        images = list(distinct.values())
        if self.workers <= 1 or len(images) <= 1:
            pngs = [self._png(im) for im in images]
        else:
            workers = min(self.workers, len(images))
            with ThreadPoolExecutor(workers, thread_name_prefix="evalsuite-png") as pool:
                pngs = list(pool.map(self._png, images))
        return dict(zip(distinct, pngs))

    def _png(self, image: Any) -> bytes | None:
        try:
            rgb = to_rgb(image)
        except Exception:  # e.g. BadImageError, or PIL's bomb error on a huge header: one sample's error
            return None
        return base64.b64encode(encode_png(rgb, self.compress_level))

    def _encode(self, s: Any, pngs: dict[int, bytes | None]) -> bytes:
        if not isinstance(s, Sample):
            raise _LocalError(f"expected a Sample, got {type(s).__name__}")
        if not isinstance(s.metadata, dict):
            raise _LocalError(f"sample {s.id!r}: metadata must be a dict, got {type(s.metadata).__name__}")
        try:
            fields = {
                key: to_wire(getattr(s, key))
                for key in ("id", "prompt", "rendered_prompt", "metadata", "seed", "group")
            }
        except TypeError as e:
            raise _LocalError(f"sample {s.id!r}: cannot be sent to a remote reward: {e}") from None
        # The images are spliced in as they are: base64 needs no JSON escaping, and having the JSON
        # encoder scan megabytes of it for escapes cost more than the HTTP transfer.
        return b"".join((dumps(fields)[:-1], b',"image":', self._wire_image(s.image, s.id, pngs),
                         b',"source_image":', self._wire_image(s.source_image, s.id, pngs), b"}"))

    def _wire_image(self, image: Any, label: Any, pngs: dict[int, bytes | None]) -> bytes:
        """The image as JSON: the base64 PNG, or the error the reward would report for this sample
        (``to_rgb`` names it), or ``null``."""
        if image is None:
            return b"null"
        png = pngs[id(image)]
        if png is None:
            try:
                to_rgb(image, label)  # fails again, now with this sample's name in the message
                png = self._png(image)
            except (BadImageError, ValueError, TypeError) as e:  # what Reward._validate reports
                return dumps({"error": str(e)})
            except Exception as e:  # never one unreadable image's crash for the whole batch
                return dumps({"error": f"sample {label!r}: cannot read image ({type(e).__name__}: {e})"})
        return b'"' + png + b'"' if png is not None else b"null"

    def _pack(self, samples: list[Any], encoded: list[bytes | None]) -> list[list[int]]:
        """Index lists, one per request: at most ``batch_size`` samples and ``max_body_bytes``; a
        per-group reward's groups stay whole (a group is its own request if it must)."""
        units: list[list[int]] = []
        if self.per_group:
            groups: dict[Any, list[int]] = {}
            for i, s in enumerate(samples):
                if encoded[i] is not None:
                    groups.setdefault(s.group_key, []).append(i)
            units = list(groups.values())
        else:
            units = [[i] for i, e in enumerate(encoded) if e is not None]
        limit = int(self.info.get("max_body_bytes") or 0) or math.inf
        requests: list[list[int]] = []
        current: list[int] = []
        size = _ENVELOPE
        for unit in units:
            unit_size = sum(len(encoded[i]) + 1 for i in unit)  # type: ignore[arg-type]
            if current and (len(current) + len(unit) > self.batch_size or size + unit_size > limit):
                requests.append(current)
                current, size = [], _ENVELOPE
            current += unit
            size += unit_size
        if current:
            requests.append(current)
        return requests

    # -- HTTP ------------------------------------------------------------------------------------
    def _post(self, idx: list[int], encoded: list[bytes | None]) -> RewardOutput:
        body = b'{"samples":[' + b",".join(encoded[i] for i in idx) + b"]}"  # type: ignore[misc]
        status, reply = self._request("POST", f"/score/{quote(self.name, safe='')}", body)
        self._raise_for(status, reply)
        try:
            out = decode_output(reply)
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteRewardError(f"{self.url}: malformed reply for {self.name!r}: {e}") from None
        if len(out) != len(idx):
            raise RemoteRewardError(f"{self.url}: {len(out)} results for {len(idx)} samples")
        return out

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            url_path = self._parts.path.rstrip("/") + path
            status, data = self._connections.request(method, url_path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            raise RemoteRewardError(f"cannot reach the reward server at {self.url} ({type(e).__name__}: "
                                    f"{e}); is `evalsuite serve` running there?") from e
        try:
            reply = loads(data)
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            raise RemoteRewardError(
                f"{self.url}{path}: HTTP {status} without a JSON object reply: {data[:200]!r}")
        return status, reply

    def _raise_for(self, status: int, reply: dict[str, Any]) -> None:
        if status != 200:
            raise RemoteRewardError(f"reward {self.name!r} at {self.url}: HTTP {status}: "
                                    f"{reply.get('error', json.dumps(reply)[:200])}")


class _Connections:
    """One keep-alive HTTP connection per calling thread (``http.client`` connections are not
    thread-safe, and a ``RemoteReward`` is shared by rollout threads). A connection the server has
    closed while idle is replaced before use, and a request that fails on a reused connection is sent
    once more on a new one: scoring has no side effects, so the retry is safe."""

    _DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

    def __init__(self, parts: SplitResult, timeout: float) -> None:
        self._parts, self._timeout = parts, timeout
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes]:
        conn = self._connection()
        reused = conn.sock is not None
        try:
            return self._exchange(conn, method, path, body, headers)
        except self._DROPPED:
            if not reused:
                raise
        return self._exchange(conn, method, path, body, headers)  # now on a new socket

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except BaseException:
            conn.close()  # a half-done exchange leaves the connection unusable; the next one reconnects
            raise

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            p = self._parts
            cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(p.hostname, p.port, timeout=self._timeout)
        elif conn.sock is not None and _readable(conn.sock):  # idle yet readable: closed by the server
            conn.close()
        return conn


def _readable(sock: Any) -> bool:
    if hasattr(select, "poll"):  # any fd number, unlike select()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class _LocalError(Exception):
    """A sample this client cannot send; it becomes that sample's error."""


def merge_outputs(
    n: int, pieces: list[tuple[list[int], RewardOutput]], local_errors: dict[int, str], name: str
) -> RewardOutput:
    """One output for ``n`` samples from per-request pieces (``pieces[k][0]`` are the sample indices)
    and the samples that never left this process (``local_errors``)."""
    scores, applicable = [math.nan] * n, [False] * n
    details: list[dict[str, Any]] = [{} for _ in range(n)]
    errors: list[str | None] = [None] * n
    for i, message in local_errors.items():
        errors[i] = message
    comp_names: list[str] = []
    for idx, out in pieces:
        name = out.name
        for k, i in enumerate(idx):
            scores[i], applicable[i], details[i], errors[i] = (
                out.scores[k], out.applicable[k], out.details[k], out.errors[k])
        comp_names += [c for c in out.components if c not in comp_names]
    components = {
        c: merge_outputs(n, [(idx, out.components[c]) for idx, out in pieces if c in out.components],
                         local_errors, c)
        for c in comp_names
    }
    return RewardOutput(name, scores, applicable, details, errors, components)
