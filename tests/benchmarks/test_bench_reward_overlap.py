"""Flow-GRPO step with rewards overlapping sampling vs the serial step (goal: overlapped >= 1.3x faster).

The reward is brightness plus a sleep (a stand-in for a VLM reward or a remote reward server: it holds no
CPU, as a reward on another GPU or host does not). The sleep is calibrated in the same run so the reward
costs about a third of the serial step: a run without it gives the step time T (its fastest step), then
the reward sleeps R = T / 2 per step (R / (T + R) = 1/3), spread over the step's samples. Both runs score
in chunks of one group (8 chunks per step); the overlapped one scores chunk k while chunk k+1 samples, so
only the last chunk's reward is not hidden: expect about (T + R) / (T + R / 8) = 1.41x when sampling
takes more of the step than the reward (here: 8 sampling steps, a Flow-GRPO "Fast" window of 2 trained
SDE steps). When the update dominates instead, the reward outlasts the sampling it hides behind and the
gain shrinks.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evalsuite.harness import flow_train
from evalsuite.harness.config import DataConfig, RewardsConfig, RewardSpec
from evalsuite.harness.flow_config import FlowLoraSettings, FlowTrainConfig
from evalsuite.reward import Score
from evalsuite.rewards.brightness import Brightness
from tests.benchmarks.test_bench_flow_step import _config as flow_step_config

G, PROMPTS, REPEATS = 4, 8, 3


class SleepingBrightness(Brightness):
    """Brightness that also sleeps ``seconds_per_sample`` per sample: a slow reward that leaves the CPU."""

    name = "sleeping_brightness"

    def __init__(self, seconds_per_sample: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seconds_per_sample = seconds_per_sample

    def _score_batch(self, samples) -> list[Score]:
        time.sleep(self.seconds_per_sample * len(samples))
        return super()._score_batch(samples)


def _config(model: Path, out_dir: Path, seconds_per_sample: float, overlap: bool) -> FlowTrainConfig:
    reward = RewardSpec(
        "slow",
        target="tests.benchmarks.test_bench_reward_overlap:SleepingBrightness",
        kwargs={"seconds_per_sample": seconds_per_sample},
    )
    base = flow_step_config(model, out_dir)  # the Flow-GRPO step benchmark's run, at this size
    return replace(
        base,
        flow=replace(
            base.flow,
            height=64,
            width=64,
            num_steps=8,
            sample_batch_size=G,
            train_batch_size=16,
            sde_window_size=2,  # Flow-GRPO "Fast": 2 SDE (trained) steps of 8, so sampling dominates the step
            sde_window_range=[0, 3],
            lora=FlowLoraSettings(r=8, alpha=8),
        ),
        rewards=RewardsConfig(components=[reward], normalize="none", chunk_groups=1, overlap=overlap),
        data=DataConfig(prompts=[f"a photo of thing {i}" for i in range(PROMPTS)]),
        grpo=replace(base.grpo, group_size=G, prompts_per_step=PROMPTS),
    )


def _step_times(config: FlowTrainConfig) -> tuple[list[float], flow_train.scaffold.TrainResult]:
    result = flow_train.train(config)
    return [m["time/step_s"] for m in result.metrics[1:]], result  # step 1 warms up


def test_bench_overlapped_rewards_vs_serial(benchmark, tmp_path_factory) -> None:
    if benchmark.disabled:
        pytest.skip("timing run: pass --benchmark-enable")
    from evalsuite.tiny import write_tiny

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench_overlap")
    model = write_tiny(root / "tiny", names=["flux"], seed=0)["flux"]
    bare = min(_step_times(_config(model, root / "calibrate", 0.0, False))[0])
    per_sample = bare / 2 / (G * PROMPTS)
    # the machine is shared (load far above its 2 cores): serial and overlapped runs alternate, each pair
    # gives the ratio of its median steps; the median pair is the result (fastest step vs fastest step too)
    serials: list[list[float]] = []
    overlaps: list[list[float]] = []
    for rep in range(REPEATS):
        s_times, s_run = _step_times(_config(model, root / f"serial{rep}", per_sample, False))
        o_times, o_run = _step_times(_config(model, root / f"overlap{rep}", per_sample, True))
        strip = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in s_run.metrics]
        assert strip == [{k: v for k, v in m.items() if not k.startswith("time/")} for m in o_run.metrics]
        serials.append(s_times)
        overlaps.append(o_times)
    ratios = sorted(statistics.median(s) / statistics.median(o) for s, o in zip(serials, overlaps))
    speedup = statistics.median(ratios)
    serial = statistics.median(statistics.median(s) for s in serials)
    fastest = min(map(min, serials)) / min(map(min, overlaps))
    share = per_sample * G * PROMPTS / serial
    expected = (bare + bare / 2) / (bare + bare / 2 / PROMPTS)  # only the last chunk's reward shows
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "step_without_reward_sleep_s": bare,
            "reward_sleep_per_step_s": per_sample * G * PROMPTS,
            "reward_share_of_serial_step": share,
            "median_serial_step_s": serial,
            "fastest_step_speedup": fastest,
            "expected_speedup": expected,
            "speedup": speedup,
            "median_speedup_per_pair": ratios,
            "chunks_per_step": PROMPTS,
            "goal": 1.3,
        }
    )
    pairs = ", ".join(f"{r:.2f}" for r in ratios)
    print(
        f"\nreward overlap: speedup {speedup:.2f}x (median of pairs {pairs}; fastest steps {fastest:.2f}x; "
        f"expected {expected:.2f}x); "
        f"reward {share:.0%} of the serial step ({serial:.3f} s); goal >= 1.3x"
    )
    assert math.isfinite(speedup)
