"""Reward server and RemoteReward: remote output == in-process output, bad requests refused, batching works.

Every server here binds 127.0.0.1 on an ephemeral port and runs in this process.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from evalsuite.rewards.brightness import LUMA, Brightness
from evalsuite.rewards.multi import MultiReward
from PIL import Image

from evalsuite import ConfigError, Reward, RewardOutput, Sample, Score, UnknownNameError
from evalsuite.images import MAX_PIXELS
from evalsuite.remote import RemoteReward, RemoteRewardError
from evalsuite.server import (
    DEFAULT_HOST,
    ImageFailure,
    RewardServer,
    build_rewards,
    dumps,
    is_loopback,
    loads,
    serve,
    to_wire,
)
from tests.reward_tester import CHECKS, RewardSpec, bad_inputs

LIMIT = 256 * 1024  # max_body_bytes of the shared test server


# -- rewards served in these tests ---------------------------------------------------------------
class Counting(Brightness):
    """Brightness that counts its score() calls (to see the micro-batcher merge requests)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.calls = 0
        self.sizes: list[int] = []

    def score(self, samples):
        self.calls += 1
        self.sizes.append(len(samples))
        return super().score(samples)


class Picky(Reward):
    """Not applicable unless metadata['want']; details with values JSON cannot carry as-is."""

    name = "picky"
    required_metadata = ("want",)

    def _score_batch(self, samples):
        out = []
        for s in samples:
            luma = float((np.asarray(s.image, dtype=np.float64) @ LUMA).mean() / 255.0)
            if not s.metadata["want"]:
                out.append(Score.not_applicable("not wanted", raw=b"\x00\xff", pair=(1, "a")))
                continue
            out.append(Score(luma * len(s.prompt), {
                "luma32": np.float32(luma), "pair": (1, ("x", 2.5)), "by_int": {1: "one", (2, 3): None},
                "nan": math.nan, "ninf": -math.inf, "tag_like": {"$float": "x"}, "nested": [{"a": [True]}],
                "neg_zero": -0.0, "big": 2**70, "text": "é\u2603\udc80",
            }))
        return out


class GroupCentered(Reward):
    """A per-group reward: luma minus the group's mean luma."""

    name = "group"
    per_group = True

    def _score_group(self, samples):
        lumas = [float((np.asarray(s.image, dtype=np.float64) @ LUMA).mean() / 255.0) for s in samples]
        mean = sum(lumas) / len(lumas)
        return [Score(v - mean, {"group_size": len(lumas)}) for v in lumas]


class SourceDelta(Reward):
    """Needs a source image (like an editing reward): luma(image) - luma(source)."""

    name = "source-delta"
    needs_source_image = True

    def _score_batch(self, samples):
        def luma(im):
            return float((np.asarray(im, dtype=np.float64) @ LUMA).mean() / 255.0)

        return [Score(luma(s.image) - luma(s.source_image)) for s in samples]


class Slow(Brightness):
    def _score_batch(self, samples):
        time.sleep(0.4)
        return super()._score_batch(samples)


def make_multi() -> MultiReward:
    components = {"brightness": Brightness(), "picky": Picky()}
    return MultiReward({"brightness": 1.0, "picky": 0.5}, rewards=components)


LOCAL = {"brightness": Brightness, "multi": make_multi, "picky": Picky, "group": GroupCentered,
         "source-delta": SourceDelta}


@pytest.fixture(scope="module")
def server():
    rewards = {"brightness": Counting(), "multi": make_multi(), "picky": Picky(), "group": GroupCentered(),
               "source-delta": SourceDelta()}
    with RewardServer(rewards, port=0, max_wait_ms=2, max_body_bytes=LIMIT) as srv:
        yield srv


# -- samples -------------------------------------------------------------------------------------
def noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def varied_samples(tmp_path) -> list[Sample]:
    """Every image form a caller may hand over, metadata that makes 'picky' apply or not, and bad inputs."""
    path = tmp_path / "on_disk.png"
    noise(24, 20, 9).save(path)
    grey16 = Image.fromarray(np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80)
    images = [
        noise(32, 40, 0), noise(40, 32, 1, "RGBA"), noise(33, 17, 2, "L"), grey16,
        np.random.default_rng(3).random((20, 28, 3)),  # float HWC in [0, 1]
        torch.rand(3, 18, 26, generator=torch.Generator().manual_seed(4)),  # CHW tensor
        encoded(noise(30, 30, 5)), encoded(noise(30, 30, 6), "JPEG"), str(path),
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)),
    ]
    good = [Sample(f"s{i}", "a photo " * (i + 1), im, metadata={"want": i % 3 != 1}, seed=i)
            for i, im in enumerate(images)]
    bad = [s for _, s, _ in bad_inputs(good[0])]
    shared_bad, shared_good = np.full((8, 8, 3), np.nan), noise(11, 7, 10)  # one object, several samples
    extra = [
        Sample("nan-array", "p", shared_bad, metadata={"want": True}),
        Sample("nan-array-again", "p", shared_bad, metadata={"want": True}),
        Sample("shared-good", "p", shared_good, metadata={"want": True}, source_image=shared_good),
        Sample("shared-good-again", "q", shared_good, metadata={"want": False}),
        Sample("bad-source", "p", noise(8, 8, 11), metadata={"want": True}, source_image=b"not an image"),
        Sample("rgba-source", "p", noise(8, 8, 12), metadata={"want": True},
               source_image=noise(5, 5, 13, "RGBA")),
        Sample("no-metadata", "p", noise(8, 8, 7)),
        Sample("bad-shape", "p", np.zeros((2, 3, 4, 5)), metadata={"want": True}),
        Sample("rendered", "scored", noise(9, 9, 8), rendered_prompt="rendered", metadata={"want": True}),
    ]
    return good + bad + extra


# -- comparison ----------------------------------------------------------------------------------
def _norm_error(e: str | None) -> str | None:
    # images.py puts a BytesIO repr (with its memory address) into corrupt-image messages
    return None if e is None else re.sub(r"0x[0-9a-f]+", "0x?", e)


def same_value(a, b) -> bool:
    """Equality that sees NaN == NaN, tells tuples from lists, and takes numpy scalars as numbers."""
    a, b = (x.item() if isinstance(x, np.generic) else x for x in (a, b))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_output(local: RewardOutput, remote: RewardOutput) -> None:
    assert remote.name == local.name
    bits = [np.asarray(out.scores, np.float64).tobytes() for out in (local, remote)]
    assert bits[0] == bits[1], f"{local.name}: {local.scores} != {remote.scores}"
    assert remote.applicable == local.applicable
    assert [_norm_error(e) for e in remote.errors] == [_norm_error(e) for e in local.errors]
    for i, (a, b) in enumerate(zip(local.details, remote.details)):
        assert same_value(a, b), f"{local.name} details[{i}]: {a!r} != {b!r}"
    assert remote.components.keys() == local.components.keys()
    for name in local.components:
        assert_same_output(local.components[name], remote.components[name])


# -- raw HTTP ------------------------------------------------------------------------------------
def request(srv: RewardServer, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wire_sample(sid: str, image, **fields) -> dict:
    return {"id": sid, "prompt": "a prompt", "image": image, **fields}


def stats(srv: RewardServer, name: str) -> dict:
    return request(srv, "GET", "/health")[1]["stats"][name]


# -- identity with in-process ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["brightness", "multi", "picky", "source-delta"])
def test_remote_output_identical_to_in_process(server, tmp_path, name):
    samples = varied_samples(tmp_path)
    local = LOCAL[name]().score(samples)
    remote = RemoteReward(server.url, name).score(samples)
    assert_same_output(local, remote)
    # the battery really exercises what it claims: scored, not-applicable and failed samples
    assert any(local.applicable) and not all(local.applicable)
    assert any(e and "zero size" in e for e in local.errors)
    assert any(e and "NaN or inf" in e for e in local.errors)
    assert any(e and "'nan-array-again'" in e for e in remote.errors)  # errors name each sharing sample
    if name in ("multi", "picky"):
        assert any(d.get("not_applicable") or d.get("skipped") for d in local.details)
    if name == "source-delta":
        assert sum(local.applicable) == 2 and any("source image:" in (e or "") for e in local.errors)
    if name == "picky":
        d = remote.details[0]
        assert d["pair"] == (1, ("x", 2.5)) and d["by_int"] == {1: "one", (2, 3): None}
        assert math.isnan(d["nan"]) and d["ninf"] == -math.inf and d["tag_like"] == {"$float": "x"}
        assert remote.details[1]["raw"] == b"\x00\xff"


def test_multi_components_round_trip_and_remote_component(server, tmp_path):
    samples = varied_samples(tmp_path)[:10]
    remote = RemoteReward(server.url, "multi").score(samples)
    assert set(remote.components) == {"brightness", "picky"}
    assert remote.components["picky"].details[1]["not_applicable"] == "not wanted"
    # a RemoteReward is a drop-in component of an in-process multi-reward
    mixed = MultiReward({"brightness": 1.0, "picky": 0.5},
                        rewards={"brightness": RemoteReward(server.url, "brightness"), "picky": Picky()})
    assert_same_output(make_multi().score(samples), mixed.score(samples))


def test_empty_batch_and_non_sample(server):
    remote = RemoteReward(server.url, "multi")
    out = remote.score([])
    assert len(out) == 0 and out.name == "multi" and set(out.components) == {"brightness", "picky"}
    good = Sample("g", "p", noise(8, 8, 0))
    local = Brightness().score([good, "not a sample"])
    assert_same_output(local, RemoteReward(server.url, "brightness").score([good, "not a sample"]))


def test_per_group_reward_keeps_groups_whole(server):
    samples = [Sample(f"g{i}", ["a cat", "a dog"][i % 2], noise(10, 10, i)) for i in range(7)]
    local = GroupCentered().score(samples)
    remote = RemoteReward(server.url, "group", batch_size=2)  # groups (4 and 3 samples) exceed batch_size
    assert_same_output(local, remote.score(samples))
    assert {d["group_size"] for d in local.details} == {3, 4}


def test_per_group_requests_are_never_merged(server):
    """Two concurrent requests with the same prompt must not become one GRPO group."""
    reqs = [[Sample(f"r{k}-{i}", "same prompt", noise(10, 10, 10 * k + i)) for i in range(3)]
            for k in range(6)]
    remote = RemoteReward(server.url, "group")
    remote.load()
    before = stats(server, "group")["score_calls"]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(remote.score, reqs))
    for req, out in zip(reqs, outs):
        assert_same_output(GroupCentered().score(req), out)
    assert stats(server, "group")["score_calls"] - before == len(reqs)


def test_shared_tester_on_remote_reward(server):
    def reference(_reward, samples):  # mean BT.601 luma by hand, not via the reward
        weights = np.array([0.299, 0.587, 0.114])
        rgb = [np.asarray(s.image.convert("RGB"), np.float64) for s in samples]
        return [float((a @ weights).mean() / 255) for a in rgb]

    spec = RewardSpec(
        name="remote-brightness", make=lambda **kw: RemoteReward(server.url, "brightness"),
        samples=lambda: [Sample(f"t{i}", "p" * i, noise(20 + 3 * i, 16 + i, 20 + i)) for i in range(5)],
        reference=reference, atol=1e-12, rtol=0,
    )
    for check in sorted(CHECKS):
        CHECKS[check](spec)


def test_describe_and_attributes_come_from_the_server(server):
    remote = RemoteReward(server.url, "picky")
    assert remote.required_metadata == () and not remote._loaded  # lazy: no request before use
    remote.load()
    assert remote.required_metadata == ("want",) and remote.needs_image and not remote.per_group
    assert remote.describe() == {**Picky().describe(), "remote": {"url": server.url, "name": "picky"}}
    assert RemoteReward(server.url, "group").load().per_group
    status, body = request(server, "GET", "/rewards")
    assert status == 200 and set(body["rewards"]) == {"brightness", "multi", "picky", "group", "source-delta"}
    assert body["rewards"]["multi"]["describe"]["weights"] == {"brightness": 1.0, "picky": 0.5}


# -- refused requests ------------------------------------------------------------------------------
PNG = b64(encoded(noise(8, 8, 0)))
BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"{}", "missing field 'samples'"),
    (b'{"samples": 3}', "'samples' must be a list"),
    (b'{"samples": [], "extra": 1}', "unknown top-level fields"),
    (b'{"samples": [1]}', "samples[0]: expected an object"),
    (b'{"samples": [{"id": "a"}]}', "samples[0]: missing field 'prompt'"),
    (b'{"samples": [{"prompt": "p"}]}', "missing field 'id'"),
    (b'{"samples": [{"id": "a", "prompt": "p", "colour": 1}]}', "unknown fields ['colour']"),
    (b'{"samples": [{"id": "a", "prompt": "p", "metadata": [1]}]}', "metadata: expected an object"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": 7}]}', "image: expected a base64 PNG"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": "@@not base64@@"}]}', "invalid base64"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": {"png": "x"}}]}', "image object must be"),
    (b'{"samples": [{"id": "a", "prompt": "p", "group": [1]}]}', "group: expected a string"),
    (b'{"samples": [{"id": "a", "prompt": "p", "seed": NaN}]}', "NaN is not JSON"),
    (b'{"samples": [{"id": "a", "prompt": "p", "metadata": {"x": {"$float": "zero"}}}]}', "malformed tagged"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_malformed_body_is_400_with_message(server, body, message):
    status, reply = request(server, "POST", "/score/brightness", body)
    assert status == 400 and message in reply["error"] and reply["status"] == 400
    status, reply = request(server, "GET", "/health")  # still serving
    assert status == 200 and reply["status"] == "ok"


@pytest.mark.parametrize(("method", "path", "headers", "status", "message"), [
    ("POST", "/score/nope", {}, 404, "no reward named 'nope'"),
    ("POST", "/elsewhere", {}, 404, "no such endpoint"),
    ("GET", "/rewards/nope", {}, 404, "no reward named 'nope'"),
    ("GET", "/score/brightness", {}, 405, "use POST"),
    ("POST", "/health", {}, 405, "use GET"),
    ("DELETE", "/score/brightness", {}, 405, "not allowed"),
    ("POST", "/score/brightness", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/score/brightness", {"Content-Length": "-3"}, 400, "bad Content-Length"),
])
def test_bad_route_method_or_headers(server, method, path, headers, status, message):
    got, reply = request(server, method, path, b'{"samples": []}' if method == "POST" else None, headers)
    assert got == status and message in reply["error"]
    assert request(server, "POST", "/score/brightness", b'{"samples": []}')[0] == 200


def test_missing_content_length_is_411(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/score/brightness")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_oversized_body_is_413_and_server_keeps_serving(server):
    body = json.dumps({"samples": [wire_sample("big", "A" * (LIMIT + 10))]}).encode()
    status, reply = request(server, "POST", "/score/brightness", body)
    assert status == 413 and "max_body_bytes" in reply["error"] and str(LIMIT) in reply["error"]
    # one sample too big for the server: the client says so instead of hanging or dropping it
    huge = Sample("huge", "p", noise(400, 400, 1))
    with pytest.raises(RemoteRewardError, match="HTTP 413"):
        RemoteReward(server.url, "brightness").score([huge])
    small = [Sample("ok", "p", noise(8, 8, 2))]
    assert_same_output(Brightness().score(small), RemoteReward(server.url, "brightness").score(small))


def test_undecodable_images_are_per_sample_errors(server):
    bomb = Image.new("1", (9000, 9000))  # 81 M pixels > MAX_PIXELS, a few KB as PNG
    good = encoded(noise(12, 12, 3))
    samples = [
        wire_sample("good", b64(good)),
        wire_sample("garbage", b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)),
        wire_sample("truncated", b64(good[: len(good) // 2])),
        wire_sample("jpeg", b64(encoded(noise(12, 12, 4), "JPEG"))),
        wire_sample("client-error", {"error": "sample 'client-error': unreadable"}),
        wire_sample("bomb", b64(encoded(bomb))),
        wire_sample("good-again", b64(good)),
    ]
    status, reply = request(server, "POST", "/score/brightness", json.dumps({"samples": samples}).encode())
    assert status == 200
    errors = reply["errors"]
    assert errors[0] is None and errors[-1] is None
    assert reply["scores"][0] == Brightness().score([Sample("x", "p", good)]).scores[0]
    assert "'garbage'" in errors[1] and "'truncated'" in errors[2]
    assert "not a PNG" in errors[3] and errors[4] == "sample 'client-error': unreadable"
    assert f"9000x9000 exceeds {MAX_PIXELS} pixels" in errors[5]
    assert reply["scores"][1:6] == [None] * 5 and reply["applicable"][1:6] == [False] * 5


def test_client_packs_requests_by_size_and_count(server):
    samples = [Sample(f"n{i}", "p", noise(160, 160, 30 + i)) for i in range(6)]  # ~100 KB of base64 each
    before = stats(server, "brightness")["requests"]
    assert_same_output(Brightness().score(samples), RemoteReward(server.url, "brightness").score(samples))
    assert stats(server, "brightness")["requests"] - before >= 3  # never more than LIMIT per request
    small = [Sample(f"m{i}", "p", noise(8, 8, i)) for i in range(5)]
    before = stats(server, "brightness")["requests"]
    remote = RemoteReward(server.url, "brightness", batch_size=2)
    assert_same_output(Brightness().score(small), remote.score(small))
    assert stats(server, "brightness")["requests"] - before == 3


def test_unserializable_metadata_is_a_per_sample_error(server):
    samples = [Sample("a", "p", noise(8, 8, 0), metadata={"want": True}),
               Sample("b", "p", noise(8, 8, 1), metadata={"want": True, "obj": object()})]
    out = RemoteReward(server.url, "multi").score(samples)
    assert out.applicable == [True, False] and "'b'" in out.errors[1] and "object" in out.errors[1]
    assert out.components["brightness"].errors[1] == out.errors[1]
    assert out.scores[0] == make_multi().score(samples[:1]).scores[0]


def test_client_errors_name_the_problem(server):
    with pytest.raises(UnknownNameError, match="no reward named 'nope'"):
        RemoteReward(server.url, "nope").load()
    with pytest.raises(ConfigError):
        RemoteReward("ftp://127.0.0.1:1", "brightness")
    closed = RewardServer({"b": Brightness()}, port=0)
    url = closed.url
    closed.close()
    with pytest.raises(RemoteRewardError, match="cannot reach"):
        RemoteReward(url, "b").score([Sample("a", "p", noise(8, 8, 0))])


# -- batching under load ---------------------------------------------------------------------------
def test_concurrent_load_is_answered_and_batched():
    """240 simultaneous one-sample requests: every answer correct, far fewer score() calls."""
    n = 240
    reward = Counting()
    colours = [(i % 256, (7 * i) % 256, 3) for i in range(n)]
    samples = [Sample(f"load{i}", "p", Image.new("RGB", (6, 6), c)) for i, c in enumerate(colours)]
    expected = Brightness().score(samples).scores
    with RewardServer({"brightness": reward}, port=0, max_batch=64, max_wait_ms=20) as srv:
        remote = RemoteReward(srv.url, "brightness", timeout=60)
        remote.load()
        barrier = threading.Barrier(n, timeout=30)

        def one(i: int) -> float:
            barrier.wait()
            out = remote.score([samples[i]])
            assert out.applicable == [True] and out.errors == [None]
            return out.scores[0]

        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            got = [f.result(timeout=90) for f in futures]
        elapsed = time.monotonic() - start
        st = stats(srv, "brightness")
    assert got == expected  # bit-identical, in order: nothing lost or swapped
    assert st["requests"] == n and st["samples"] == n and st["failures"] == 0
    assert reward.calls == st["score_calls"] < n and max(reward.sizes) > 1
    assert sum(reward.sizes) == n and max(reward.sizes) <= 64
    assert elapsed < 90


def test_failing_request_does_not_take_merged_neighbours_down():
    class Fragile(Brightness):
        def score(self, samples):
            if any(s.id == "poison" for s in samples):
                raise RuntimeError("backend exploded")
            return super().score(samples)

    with RewardServer({"b": Fragile()}, port=0, max_wait_ms=200) as srv:
        remote = RemoteReward(srv.url, "b")
        remote.load()
        ok = [[Sample(f"ok{i}", "p", noise(8, 8, i))] for i in range(4)]
        with ThreadPoolExecutor(5) as pool:
            bad = pool.submit(remote.score, [Sample("poison", "p", noise(8, 8, 9))])
            good = [pool.submit(remote.score, s) for s in ok]
            with pytest.raises(RemoteRewardError, match="HTTP 500.*backend exploded"):
                bad.result(timeout=30)
            for s, f in zip(ok, good):
                assert_same_output(Brightness().score(s), f.result(timeout=30))
        assert request(srv, "GET", "/health")[1]["stats"]["b"]["failures"] == 1


# -- lifecycle ---------------------------------------------------------------------------------------
def test_graceful_shutdown_answers_in_flight_requests():
    srv = RewardServer({"slow": Slow()}, port=0).start()
    remote = RemoteReward(srv.url, "slow")
    remote.load()
    sample = [Sample("a", "p", noise(8, 8, 0))]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(remote.score, sample)
        deadline = time.monotonic() + 10
        while srv.health()["stats"]["slow"]["requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        srv.close()
        assert time.monotonic() - start < 10
        assert_same_output(Brightness().score(sample), pending.result(timeout=10))
    with pytest.raises(RemoteRewardError, match="cannot reach"):
        remote.score(sample)


def test_serve_builds_by_name_and_stops_on_request():
    ready: list[RewardServer] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=("brightness,multi",), daemon=True, kwargs=dict(
        port=0, reward_kwargs={"multi": {"weights": "brightness:2"}}, stop=stop, on_ready=ready.append))
    thread.start()
    deadline = time.monotonic() + 30
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)
    srv = ready[0]
    assert srv.host == DEFAULT_HOST and set(srv.rewards) == {"brightness", "multi"}
    samples = [Sample("a", "p", noise(8, 8, 0))]
    out = RemoteReward(srv.url, "multi").score(samples)
    assert out.scores == Brightness().score(samples).scores and set(out.components) == {"brightness"}
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_build_rewards_and_config_errors():
    built = build_rewards(["brightness"], reward_kwargs={"brightness": {"target": 0.5}})
    assert built["brightness"].target == 0.5
    with pytest.raises(ConfigError, match="not served"):
        build_rewards("brightness", reward_kwargs={"multi": {}})
    with pytest.raises(ConfigError):
        build_rewards("brightness,brightness")
    with pytest.raises(ConfigError):
        RewardServer({}, port=0)
    with pytest.raises(ConfigError):
        RewardServer({"b": Brightness()}, port=0, max_batch=0)


def test_loopback_is_the_default():
    assert DEFAULT_HOST == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("example.org")
    srv = RewardServer({"b": Brightness()}, port=0)
    try:
        assert srv._httpd.server_address[0] == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
    finally:
        srv.close()


# -- wire codec ----------------------------------------------------------------------------------------
def test_wire_codec_round_trips_exactly():
    values = {
        "floats": [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, math.pi],
        "special": (math.nan, math.inf, -math.inf), "bytes": b"\x00\xff", "int_keys": {1: [2], (3, "x"): {}},
        "tag_like": {"$tuple": 1}, "np": np.float32(0.25), "arr": np.arange(3), "text": "\udc80é",
    }
    back = loads(dumps(to_wire(values)))
    for a, b in zip(values["floats"], back["floats"]):
        assert np.float64(a).tobytes() == np.float64(b).tobytes()
    assert math.isnan(back["special"][0]) and back["special"][1:] == (math.inf, -math.inf)
    assert back["bytes"] == b"\x00\xff" and back["int_keys"] == {1: [2], (3, "x"): {}}
    assert back["tag_like"] == {"$tuple": 1} and back["np"] == 0.25 and back["arr"] == [0, 1, 2]
    assert back["text"] == "\udc80é"
    assert b"NaN" not in dumps(to_wire(values))  # standard JSON only
    with pytest.raises(TypeError):
        to_wire(object())
    assert to_wire(object(), strict=False).startswith("<object")


def test_image_failure_placeholder_raises_the_recorded_error():
    sample = replace(Sample("x", "p"), image=ImageFailure("sample 'x': it broke"))
    assert Brightness().score([sample]).errors == ["sample 'x': it broke"]


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (13, 1), (37, 23)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_client_png_writer_is_lossless(size, level):
    from evalsuite.remote import encode_png

    img = noise(*size, seed=size[0] * 100 + size[1])
    back = Image.open(io.BytesIO(encode_png(img, level)))
    assert back.mode == "RGB" and back.size == img.size
    assert np.array_equal(np.asarray(back), np.asarray(img))
    with pytest.raises(ValueError):
        encode_png(img.convert("L"))


def test_sigterm_stops_a_serving_process_cleanly():
    import signal
    import subprocess
    import sys

    code = ("from evalsuite.server import serve\n"
            "serve('brightness', port=0, on_ready=lambda s: print(s.url, flush=True))\n"
            "print('stopped', flush=True)\n")
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        samples = [Sample("a", "p", noise(8, 8, 0))]
        assert RemoteReward(url, "brightness").score(samples).scores == Brightness().score(samples).scores
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
