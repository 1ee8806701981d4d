"""Rewards that overlap sampling (rewards.overlap) and reward failure handling (timeout, retry, stop).

The trainer tests run the same tiny run serially and overlapped (with a reward whose duration jitters, so
the worker's timing differs from run to run) and require identical metrics and weights, bit for bit."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from evalsuite.errors import ConfigError, ModelLoadError
from evalsuite.harness import flow_train
from evalsuite.harness.config import GeneratorConfig, RewardsConfig, RewardSpec, SFTConfig
from evalsuite.harness.reward_calls import ChunkScorer, RewardFailedError, chunk_rows, guarded_score
from evalsuite.harness.rewards import RewardSet
from evalsuite.reward import Reward, RewardOutput, Score
from evalsuite.sample import Sample
from tests import test_flow_train, test_train


class JitteryBrightness(Reward):
    """Mean luma, after a random sleep of up to 20 ms from its own RNG (not torch's): the overlapped
    worker finishes at a different moment every run, which must not change anything."""

    name = "jittery_brightness"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._delay = random.Random()

    def _score_batch(self, samples):
        time.sleep(self._delay.uniform(0.0, 0.02))
        return [
            Score(float(np.asarray(s.image.convert("L"), dtype=np.float64).mean() / 255)) for s in samples
        ]


class Counting(Reward):
    """Scores 1.0 per sample; counts calls and how many run at once (must never exceed 1)."""

    name = "counting"
    needs_image = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[list[str]] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def score(self, samples):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.01)
        self.calls.append([s.id for s in samples])
        with self._lock:
            self.active -= 1
        return self._output(samples)

    def _score_batch(self, samples):  # unused: ``score`` is the behaviour under test
        raise AssertionError("not called")

    def _output(self, samples) -> RewardOutput:
        n = len(samples)
        return RewardOutput(self.name, [1.0] * n, [True] * n, [{} for _ in samples], [None] * n)


class RaisesOnce(Counting):
    """Raises as a whole on its first call (a dropped connection), then scores."""

    def score(self, samples):
        self.calls.append([s.id for s in samples])
        if len(self.calls) == 1:
            raise ConnectionError("connection reset by peer")
        return self._output(samples)


class AlwaysRaises(Counting):
    name = "always_raises"

    def score(self, samples):
        self.calls.append([s.id for s in samples])
        raise RuntimeError("CUDA error: device-side assert triggered")


class Hangs(Counting):
    """Hangs until ``release`` is set (the test sets it when done, so no thread outlives it for long)."""

    name = "hangs"
    release = threading.Event()

    def score(self, samples):
        self.calls.append([s.id for s in samples])
        self.release.wait(30)
        return self._output(samples)


class AlwaysRaisesRewards(AlwaysRaises):
    """``AlwaysRaises`` under its own name, built by a trainer from a ``target``."""


class HangsInTraining(Hangs):
    release = threading.Event()


def _samples(n: int, prefix: str = "s") -> list[Sample]:
    return [Sample(id=f"{prefix}{i}", prompt="a cat") for i in range(n)]


def _no_sleep(waits: list[float]):
    return waits.append


# -------------------------------------------------------------------------------- timeout and retry


def test_a_reward_that_raises_once_is_retried_after_a_backoff_and_its_scores_kept():
    reward, waits = RaisesOnce(), []
    out = guarded_score(
        "r", reward, _samples(3), timeout_s=None, retries=2, backoff_s=0.5, sleep=_no_sleep(waits)
    )
    assert out.scores == [1.0, 1.0, 1.0] and len(reward.calls) == 2 and waits == [0.5]


def test_a_reward_that_always_raises_stops_after_its_retries_naming_it_and_its_last_error():
    reward, waits = AlwaysRaises(), []
    with pytest.raises(
        RewardFailedError, match=r"reward 'clip' failed 4 time\(s\).*RuntimeError: CUDA error"
    ):
        guarded_score(
            "clip", reward, _samples(2), timeout_s=None, retries=3, backoff_s=1.0, sleep=waits.append
        )
    assert len(reward.calls) == 4 and waits == [1.0, 2.0, 4.0]  # exponential backoff


def test_a_reward_that_hangs_past_the_timeout_stops_without_a_second_concurrent_call():
    reward = Hangs()
    t0 = time.perf_counter()
    try:
        with pytest.raises(
            RewardFailedError, match=r"reward 'vlm' timed out after 0.2 s and is still running"
        ):
            guarded_score("vlm", reward, _samples(2), timeout_s=0.2, retries=2, backoff_s=0.0)
    finally:
        Hangs.release.set()
    assert time.perf_counter() - t0 < 10  # far less than the hang
    assert len(reward.calls) == 1  # never called again while the first call is still inside it


def test_a_call_that_times_out_but_returns_during_the_backoff_is_retried():
    class SlowOnce(Counting):
        def score(self, samples):
            self.calls.append(1)
            if len(self.calls) == 1:
                time.sleep(0.5)
            return self._output(samples)

    reward = SlowOnce()
    out = guarded_score("slow", reward, _samples(2), timeout_s=0.1, retries=1, backoff_s=1.0)
    assert out.scores == [1.0, 1.0] and len(reward.calls) == 2


def test_setup_errors_are_not_retried_and_keep_their_type():
    class Missing(Counting):
        def score(self, samples):
            self.calls.append(1)
            raise ModelLoadError("cannot load 'x': not in the cache")

    reward = Missing()
    with pytest.raises(ModelLoadError, match="not in the cache"):
        guarded_score("m", reward, _samples(1), timeout_s=None, retries=3, backoff_s=0.0)
    assert len(reward.calls) == 1


class FailsWhenFlagged(Reward):
    name = "flagged"
    needs_image = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _score_batch(self, samples):
        self.calls += 1
        if any(s.metadata.get("bad") for s in samples):
            raise ValueError("unreadable")
        return [Score(2.0) for _ in samples]


def test_one_bad_sample_stays_nan_and_an_all_errored_call_is_retried_then_kept():
    good_and_bad = [Sample(id="ok", prompt="a"), Sample(id="bad", prompt="b", metadata={"bad": True})]
    out = guarded_score("f", FailsWhenFlagged(), good_and_bad, timeout_s=None, retries=0, backoff_s=0.0)
    assert out.scores[0] == 2.0 and out.scores[1] != out.scores[1] and "unreadable" in out.errors[1]
    all_bad = [Sample(id=f"b{i}", prompt="b", metadata={"bad": True}) for i in range(3)]
    reward = FailsWhenFlagged()
    out = guarded_score("f", reward, all_bad, timeout_s=None, retries=1, backoff_s=0.0)
    assert all("unreadable" in e for e in out.errors) and reward.calls >= 2  # retried before it was kept


def _flagged_set() -> RewardSet:
    config = RewardsConfig(components=[RewardSpec(name="flagged")], retries=0)
    return RewardSet(config, {"flagged": FailsWhenFlagged()})


def test_a_group_failing_on_its_own_keeps_the_step_but_a_step_failing_everywhere_stops_the_run():
    reward_set = _flagged_set()
    good = [Sample(id=f"g{i}", prompt="a") for i in range(2)]
    bad = [Sample(id=f"b{i}", prompt="b", metadata={"bad": True}) for i in range(2)]
    with ChunkScorer(reward_set.raw, overlap=False) as scorer:  # chunk 2 (one prompt's group) all errored
        scorer.submit(good, [None] * 2)
        scorer.submit(bad, [None] * 2)
        raw, details = scorer.collect()
    assert raw["flagged"][:2].tolist() == [2.0, 2.0] and raw["flagged"][2:].isnan().all()
    assert "unreadable" in details[3]["flagged.error"]
    with ChunkScorer(reward_set.raw, overlap=True) as scorer:
        scorer.submit(bad[:1], [None])
        scorer.submit(bad[1:], [None])
        with pytest.raises(RewardFailedError, match=r"reward 'flagged' failed on all 2 samples of the step"):
            scorer.collect()


def test_reward_call_settings_are_checked_with_their_config_keys():
    for bad, key in [
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": -1}, "retries"),
        ({"retry_backoff_s": -1.0}, "retry_backoff_s"),
        ({"chunk_groups": 0}, "chunk_groups"),
    ]:
        with pytest.raises(ConfigError, match=f"rewards.{key}"):
            RewardSet(RewardsConfig(components=[RewardSpec("format")], **bad))
    with pytest.raises(ConfigError, match="rewards.overlap needs rewards.chunk_groups"):
        RewardSet(RewardsConfig(components=[RewardSpec("format")], overlap=True))


# --------------------------------------------------------------------------------- chunked scoring


def test_chunks_are_whole_groups_in_order():
    assert chunk_rows(3, 2, 2) == [[0, 1, 2, 3], [4, 5]]
    assert chunk_rows(3, 2, None) == [[0, 1, 2, 3, 4, 5]]
    assert chunk_rows(2, 4, 9) == [list(range(8))]


def test_overlapped_chunks_are_scored_while_the_caller_goes_on_one_at_a_time_in_order():
    reward = Counting()
    started, release = threading.Event(), threading.Event()

    def score(samples, extra):
        started.set()
        release.wait(10)
        return {"c": torch.tensor([float(s.id[1:]) for s in samples])}, [{} for _ in samples]

    with ChunkScorer(score, overlap=True) as scorer:
        scorer.submit(_samples(2), [None, None])
        assert started.wait(10)  # scoring runs on the worker while submit has returned
        scorer.submit([Sample(id="s7", prompt="x")], [None])
        release.set()
        raw, details = scorer.collect()
    assert raw["c"].tolist() == [0.0, 1.0, 7.0] and len(details) == 3

    reward_set = RewardSet(RewardsConfig(components=[RewardSpec("counting")]), {"counting": reward})
    with ChunkScorer(reward_set.raw, overlap=True) as scorer:
        for k in range(4):
            scorer.submit(_samples(2, f"c{k}-"), [None, None])
        scorer.collect()
    assert [c[0] for c in reward.calls] == ["c0-0", "c1-0", "c2-0", "c3-0"] and reward.most_active == 1


def test_a_failed_chunk_stops_the_step_at_the_next_submit():
    def score(samples, extra):
        raise RewardFailedError("reward 'x' failed")

    with ChunkScorer(score, overlap=True) as scorer, pytest.raises(RewardFailedError, match="'x'"):
        scorer.submit(_samples(1), [None])
        for _ in range(200):
            time.sleep(0.01)
            scorer.submit(_samples(1), [None])


# ---------------------------------------------------------------------------------------- trainers


def _same_runs(serial, overlapped, weights: str) -> None:
    drop = {k for m in serial.metrics for k in m if k.startswith("time/")}
    strip = [{k: v for k, v in m.items() if k not in drop} for m in serial.metrics]
    assert strip == [{k: v for k, v in m.items() if k not in drop} for m in overlapped.metrics]
    a = test_flow_train._weights(serial.final_dir / weights)
    b = test_flow_train._weights(overlapped.final_dir / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flow_config(out: Path, tiny_dir: Path, **rewards) -> flow_train.FlowTrainConfig:
    base = test_flow_train.make_config(out, tiny_dir, steps=3, log_images_every=0)
    jittery = RewardSpec("jittery", target="tests.test_reward_overlap:JitteryBrightness")
    return replace(
        base,
        flow=replace(base.flow, sample_batch_size=4, timestep_fraction=0.5),
        rewards=RewardsConfig(components=[RewardSpec("brightness"), jittery], chunk_groups=1, **rewards),
    )


def test_flow_trainer_overlapped_equals_serial_bit_for_bit(tiny_dir, tmp_path):
    serial = flow_train.train(_flow_config(tmp_path / "serial", tiny_dir))
    overlapped = flow_train.train(_flow_config(tmp_path / "overlap", tiny_dir, overlap=True))
    assert serial.metrics[-1]["reward/std"] > 0  # the rewards carry signal, so equal runs are a real check
    _same_runs(serial, overlapped, "flow_lora/pytorch_lora_weights.safetensors")


def test_rewriter_trainer_overlapped_equals_serial_bit_for_bit(tmp_path):
    from evalsuite.harness.train import train
    from evalsuite.tiny import write_tiny

    tiny = write_tiny(tmp_path / "tiny", names=["qwen2-lm", "flux"], seed=0)

    def config(name: str, overlap: bool):
        jittery = RewardSpec("jittery", target="tests.test_reward_overlap:JitteryBrightness")
        base = test_train.make_config(tmp_path / name, tiny["qwen2-lm"], steps=2, sft=SFTConfig())
        return replace(
            base,
            generator=GeneratorConfig(
                model=str(tiny["flux"]),
                dtype="float32",
                num_inference_steps=2,
                height=32,
                width=32,
                batch_size=4,
                call_kwargs={"max_sequence_length": 16},
                same_noise_in_group=False,
            ),
            rewards=RewardsConfig(
                components=[*base.rewards.components, jittery], chunk_groups=1, overlap=overlap
            ),
        )

    serial = train(config("serial", False))
    overlapped = train(config("overlap", True))
    _same_runs(serial, overlapped, "adapter/adapter_model.safetensors")


def test_a_reward_that_always_raises_stops_the_flow_run_naming_it(tiny_dir, tmp_path):
    failing = RewardSpec("judge", target="tests.test_reward_overlap:AlwaysRaisesRewards")
    config = _flow_config(tmp_path / "fail", tiny_dir, overlap=True, retries=1, retry_backoff_s=0.0)
    config = replace(config, rewards=replace(config.rewards, components=[RewardSpec("brightness"), failing]))
    with pytest.raises(RewardFailedError, match=r"reward 'judge' failed 2 time\(s\).*CUDA error"):
        flow_train.train(config)
    assert not (tmp_path / "fail" / "final").exists()


def test_a_reward_that_hangs_past_the_timeout_stops_the_flow_run(tiny_dir, tmp_path):
    hanging = RewardSpec("slow_vlm", target="tests.test_reward_overlap:HangsInTraining")
    config = _flow_config(tmp_path / "hang", tiny_dir, timeout_s=0.5, retries=1, retry_backoff_s=0.0)
    config = replace(config, rewards=replace(config.rewards, components=[RewardSpec("brightness"), hanging]))
    try:
        with pytest.raises(RewardFailedError, match="reward 'slow_vlm' timed out after 0.5 s"):
            flow_train.train(config)
    finally:
        HangsInTraining.release.set()


def test_promptloop_in_chunks_refines_every_row_once_and_overlapped_equals_serial(tiny_dir, tmp_path):
    def config(name: str, overlap: bool) -> flow_train.FlowTrainConfig:
        base = _flow_config(tmp_path / name, tiny_dir, overlap=overlap)
        c = replace(
            base,
            mode="promptloop",
            steps=2,
            flow=replace(base.flow, sample_batch_size=2),  # sub-batches inside each chunk too
            **test_flow_train.promptloop_settings(tiny_dir),
        )
        c.promptloop = replace(c.promptloop, refine_steps=[1], preview_size=56, max_pixels=56 * 56)
        return c

    refined_rows: list[list[int]] = []
    original = flow_train.lm_update

    def spy(batch, advantages, **kw):
        refined_rows.append(sorted(r for rows in batch.actions.rows for r in rows))
        assert [a["rows"] for a in batch.traj.actions] == batch.actions.rows  # rows of the whole step
        return original(batch, advantages, **kw)

    flow_train.lm_update = spy
    try:
        serial = flow_train.train(config("serial", False))
        overlapped = flow_train.train(config("overlap", True))
    finally:
        flow_train.lm_update = original
    assert refined_rows == [list(range(8))] * 4  # 2 chunks × 2 sub-batches, each row refined once
    _same_runs(serial, overlapped, "lm_adapter/adapter_model.safetensors")


def test_a_served_reward_overlapped_gives_the_run_of_the_in_process_reward(tiny_dir, tmp_path):
    """``RemoteReward`` against ``evalsuite serve`` (here in-process on 127.0.0.1) as a trainer component:
    the overlapped remote run equals the serial in-process one, metrics and weights bit for bit."""
    from evalsuite.rewards.brightness import Brightness
    from evalsuite.server import RewardServer

    def config(name: str, spec: RewardSpec, overlap: bool) -> flow_train.FlowTrainConfig:
        base = _flow_config(tmp_path / name, tiny_dir, overlap=overlap)
        return replace(base, rewards=replace(base.rewards, components=[spec]))

    local = RewardSpec("bright", target="evalsuite.rewards.brightness:Brightness")
    serial = flow_train.train(config("local", local, False))
    with RewardServer({"brightness": Brightness()}, port=0, max_wait_ms=2) as server:
        kwargs = {"url": server.url, "name": "brightness"}
        remote = RewardSpec("bright", kwargs=kwargs, target="evalsuite.remote:RemoteReward")
        overlapped = flow_train.train(config("remote", remote, True))
    _same_runs(serial, overlapped, "flow_lora/pytorch_lora_weights.safetensors")


def test_a_reward_server_that_goes_away_mid_run_stops_it_after_the_retries(tiny_dir, tmp_path, monkeypatch):
    from evalsuite.rewards.brightness import Brightness
    from evalsuite.server import RewardServer

    server = RewardServer({"brightness": Brightness()}, port=0, max_wait_ms=2).start()
    updates = []
    original = flow_train.flow_update

    def update_then_stop_the_server(*args, **kwargs):
        updates.append(1)
        server.close()  # after step 1's update: step 2's rewards find nobody
        return original(*args, **kwargs)

    monkeypatch.setattr(flow_train, "flow_update", update_then_stop_the_server)
    base = _flow_config(tmp_path / "down", tiny_dir, overlap=True, retries=1, retry_backoff_s=0.0)
    remote = RewardSpec("remote", kwargs={"url": server.url, "name": "brightness"})  # the registered name
    config = replace(base, rewards=replace(base.rewards, components=[remote]))
    with pytest.raises(
        RewardFailedError, match=r"reward 'remote' failed 2 time\(s\).*cannot reach the reward"
    ):
        flow_train.train(config)
    assert updates == [1]  # step 2 never trained


def test_overlap_timeout_and_retries_may_change_on_resume_but_chunking_may_not():
    from evalsuite.harness.resume import config_changes

    old = {
        "rewards": {
            "overlap": False,
            "chunk_groups": 1,
            "timeout_s": None,
            "retries": 2,
            "retry_backoff_s": 1,
        }
    }
    new = {
        "rewards": {"overlap": True, "chunk_groups": 1, "timeout_s": 60, "retries": 5, "retry_backoff_s": 3}
    }
    assert config_changes(old, new) == {}
    new["rewards"]["chunk_groups"] = 2  # changes the batches sampled and scored together
    assert config_changes(old, new) == {"rewards.chunk_groups": (1, 2)}
