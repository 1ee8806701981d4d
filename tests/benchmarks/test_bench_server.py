"""Reward server overhead: ``RemoteReward.score`` over loopback vs the same reward in-process, same batch.

Brightness costs almost nothing, so the ratio is the transport's whole cost: ``to_rgb`` + PNG encode
+ base64 + JSON on the client, HTTP on loopback, decode on the server, and the reply. A model reward
(tens of ms per image) hides most of it; the absolute ``overhead_per_image_s`` says by how much.
Noise images are PNG's worst case (incompressible), so the wire size is an upper bound.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PIL import Image

from evalsuite import Sample
from evalsuite.remote import RemoteReward
from evalsuite.rewards.brightness import Brightness
from evalsuite.server import RewardServer

ROUNDS = 3
IMAGES = 16


def _best_of(fn, rounds: int = ROUNDS) -> float:
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("size", [64, 256])
def test_bench_remote_vs_in_process(benchmark, size):
    rng = np.random.default_rng(0)
    samples = [Sample(f"b{i}", "p", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
               for i in range(IMAGES)]
    local = Brightness(batch_size=IMAGES)
    with RewardServer({"brightness": Brightness(batch_size=IMAGES)}, port=0) as server:
        remote = RemoteReward(server.url, "brightness", batch_size=IMAGES)
        assert remote.score(samples).scores == local.score(samples).scores  # warm-up, and same numbers
        in_process = _best_of(lambda: local.score(samples))
        over_http = _best_of(lambda: remote.score(samples))
        client_encode = _best_of(lambda: remote._encode_images(samples))
        out = benchmark.pedantic(remote.score, args=(samples,), rounds=ROUNDS, iterations=1)
        pngs = remote._encode_images(samples)
        wire = sum(len(remote._encode(s, pngs)) for s in samples)
    assert all(out.applicable)
    ratio = over_http / in_process
    benchmark.extra_info.update({
        "images": IMAGES,
        "size": size,
        "in_process_s": in_process,
        "remote_s": over_http,
        "client_encode_s": client_encode,
        "ratio": ratio,
        "overhead_per_image_s": (over_http - in_process) / IMAGES,
        "request_bytes": wire,
    })
    assert math.isfinite(ratio)
