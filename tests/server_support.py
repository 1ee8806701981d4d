"""What the reward server tests share: the rewards served, sample batteries, output comparison, raw HTTP.

Every server here binds 127.0.0.1 on an ephemeral port and runs in this process.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import re
import time

import numpy as np
import torch
from PIL import Image

from evalsuite import Reward, RewardOutput, Sample, Score
from evalsuite.rewards.brightness import LUMA, Brightness
from evalsuite.rewards.multi import MultiReward
from evalsuite.server import RewardServer
from tests.reward_tester import bad_inputs

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


def shared_server() -> RewardServer:
    """The server most tests share (one per test module): every reward above, a small body limit."""
    rewards = {"brightness": Counting(), "multi": make_multi(), "picky": Picky(), "group": GroupCentered(),
               "source-delta": SourceDelta()}
    return RewardServer(rewards, port=0, max_wait_ms=2, max_body_bytes=LIMIT)


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
