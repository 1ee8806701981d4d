"""Reward server and RemoteReward: remote output == in-process output, batching works, clean lifecycle.

Every server here binds 127.0.0.1 on an ephemeral port and runs in this process.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalsuite import ConfigError, Sample
from evalsuite.remote import RemoteReward, RemoteRewardError
from evalsuite.rewards.brightness import Brightness
from evalsuite.rewards.multi import MultiReward
from evalsuite.server import (
    DEFAULT_HOST,
    RewardServer,
    build_rewards,
    is_loopback,
    serve,
)
from tests.reward_tester import CHECKS, RewardSpec
from tests.server_support import (
    LOCAL,
    Counting,
    GroupCentered,
    Picky,
    Slow,
    assert_same_output,
    make_multi,
    noise,
    request,
    shared_server,
    stats,
    varied_samples,
)


@pytest.fixture(scope="module")
def server():
    with shared_server() as srv:
        yield srv

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
        assert srv.address[0] == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
    finally:
        srv.close()



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


def test_serve_without_the_server_extra_says_which_extra(monkeypatch, capsys):
    import logging
    import sys

    import evalsuite.server
    from evalsuite.cli import main
    from evalsuite.errors import MissingBackendError

    def never(*args, **kwargs):
        raise AssertionError("rewards were built before the missing extra was reported")

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    monkeypatch.setattr(evalsuite.server, "build_rewards", never)
    with pytest.raises(MissingBackendError, match=r"pip install 'evalsuite\[server\]'"):
        serve("brightness", port=0)
    with pytest.raises(MissingBackendError, match="evalsuite serve"):
        RewardServer({"b": Brightness()}, port=0)
    level = logging.getLogger("evalsuite").level
    try:
        assert main(["serve", "--reward", "brightness", "--port", "0"]) == 1
    finally:
        logging.getLogger("evalsuite").setLevel(level)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("evalsuite serve: error:") and "evalsuite[server]" in err
