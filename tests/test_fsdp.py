"""FSDP2 (harness/sharding.py) on 2 CPU processes over gloo: the sharded runs equal one process, resume
exactly, and export folders that load like a single-process run's.

Tolerance: a sharded and a single-process run do the same arithmetic except for summation order (each rank
samples and recomputes half the batch, and gradients are averaged by a reduce-scatter instead of one mean
over the whole batch), so they agree to float32 rounding amplified by two Adam steps. Weights are compared
to 1e-4 of the run's largest weight change (a LoRA: of its largest weight; plus 1e-7); per-step numbers
to rtol 1e-4 with an absolute floor of 1e-5 for quantities that are sums of O(1) terms cancelling to ~0
(the first step's policy loss).
Adam's g/(√v + ε) would turn the rounding noise of gradient elements near 0 into updates of ±lr, so the
flow runs use ε = 1e-3 (above those elements' gradients): the update stays a smooth function of the
gradient and the comparison means something. A resumed sharded run redoes exactly the same operations on
the same shards, so it must match bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from evalsuite.harness import flow_train
from evalsuite.reward import Reward, Score
from tests.test_flow_train import make_config as make_flow_config
from tests.test_train import _with_sft, sft_adapter, tiny  # noqa: F401  (module fixtures used below)
from tests.test_train import make_config as make_rewriter_config

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
pytestmark = [
    pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

DDP_ARGS = "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"
FSDP2 = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "fsdp_config": {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False,
    },
    "mixed_precision": "no",
    "num_machines": 1,
    "num_processes": 2,
    "machine_rank": 0,
    "rdzv_backend": "static",
    "same_network": True,
    "use_cpu": False,
}


class TextLengthReward(Reward):
    """Test reward that varies between an untrained LM's completions: characters of the rewrite / 100."""

    name = "text_length"
    needs_image = False

    def _score_batch(self, samples):
        return [Score(len(s.rendered_prompt) / 100.0) for s in samples]


# -------------------------------------------------------------------------------------------- helpers


def fsdp_config(tmp_path: Path) -> Path:
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(FSDP2))
    return path


def start(
    tmp_path: Path,
    module: str,
    *args: str,
    machines: int = 1,
    path: tuple[Path, ...] = (),
    ddp: bool = False,
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen]:
    """``accelerate launch --config_file fsdp.yaml -m MODULE ARGS`` on 2 processes: one machine with two,
    or two "machines" on 127.0.0.1 with one each (``--machine_rank 0/1``, started together); ``ddp``: the
    same two processes under DDP (``--multi_gpu`` starts ranked CPU processes). Each launcher leads its
    own process group; stderr goes to ``launch.<pid>.err`` in ``tmp_path``."""
    base = [str(ACCELERATE), "launch", "--config_file", str(fsdp_config(tmp_path))]
    if ddp:
        base = [str(ACCELERATE), "launch", *DDP_ARGS.split()]
    if machines == 1:
        commands = [[*base, "-m", module, *args]]
    else:
        port = str(29500 + os.getpid() % 2000)
        commands = [
            [
                *base,
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                "-m",
                module,
                *args,
            ]
            for rank in range(machines)
        ]
    pythonpath = os.pathsep.join(str(p) for p in (*path, REPO))
    full_env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = []
    for command in commands:
        log = {"dir": tmp_path, "prefix": "launch.", "suffix": ".err", "delete": False}
        with tempfile.NamedTemporaryFile("w", **log) as err:
            proc = subprocess.Popen(
                command,
                env={**full_env, **(env or {})},
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        proc.err_path = err.name  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def launch(tmp_path: Path, module: str, *args: str, **options) -> None:
    """``start`` and wait: every launch must succeed."""
    for proc in start(tmp_path, module, *args, **options):
        proc.wait(timeout=600)
        assert proc.returncode == 0, Path(proc.err_path).read_text()[-3000:]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc): torchrun starts each rank in a session of its own, so
    a signal to the launcher's process group does not reach the ranks."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def sigkill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the launch as a machine failure would: the launcher's process group and every rank below it,
    all at once (no clean-up, no exit handlers)."""
    ranks = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def recipe(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_steps_match(a: list[dict[str, str]], b: list[dict[str, str]], keys: list[str]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for k in keys:
            assert float(row_a[k]) == pytest.approx(float(row_b[k]), rel=1e-4, abs=1e-5), (row_a["step"], k)


def assert_weights_match(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict) -> None:
    """Equal to 1e-4 of the largest change from ``start`` (no start: of the weights' own size)."""
    assert a.keys() == b.keys() and a
    moved = max(float((b[k] - start.get(k, torch.zeros_like(b[k]))).abs().max()) for k in b)
    assert moved > 0
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-4 * moved + 1e-7, (worst, moved)


def flow_recipe(tiny_dir: Path, out: Path, **changes):
    config = make_flow_config(out, tiny_dir, **{"steps": 2, "log_param_hash": True, **changes})
    config.grpo.prompts_per_step, config.grpo.group_size, config.grpo.micro_batch_size = 2, 4, 4
    config.flow.sample_batch_size = config.flow.train_batch_size = 4
    config.optim.lr, config.optim.eps = 1e-3, 1e-3  # see the module docstring
    return config


def lora_file(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "flow_lora" / "pytorch_lora_weights.safetensors"))


FLOW_KEYS = ["flow/loss", "flow/policy_loss", "flow/kl", "flow/grad_norm", "flow/ratio_mean", "reward/mean"]


# ---------------------------------------------------------------------------------------------- tests


def test_flow_lora_sharded_equals_one_process_and_resumes_exactly(tiny_dir, tmp_path):
    torch.set_num_threads(1)
    sharded = flow_recipe(tiny_dir, tmp_path / "sharded", save_every=1)
    launch(tmp_path, "evalsuite.cli", "train", "--config", str(recipe(sharded, tmp_path / "sharded.yaml")))
    single = flow_train.train(flow_recipe(tiny_dir, tmp_path / "single"))
    assert single.steps == 2

    # per-step numbers and the exported LoRA match one process; the on-policy self-test held on every rank
    rows = metrics(tmp_path / "sharded")
    assert_steps_match(rows, metrics(tmp_path / "single"), FLOW_KEYS)
    assert all(float(r["selftest/max_abs_logp_diff"]) < 1e-4 for r in rows)
    assert_weights_match(lora_file(tmp_path / "sharded"), lora_file(tmp_path / "single"), {})
    hashes = [(tmp_path / "sharded" / f"param_hash.rank{r}.jsonl").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]  # both ranks hash the same gathered weights

    # the checkpoint is each rank's shards in safetensors, nothing pickled
    ckpt = tmp_path / "sharded" / "checkpoints" / "step_000002"
    assert list((ckpt / "sharded").glob("*.safetensors"))
    assert not list(ckpt.rglob("*.pt")) and not list(ckpt.rglob("*.distcp"))

    # SIGKILLed during step 2, half-way through writing its sharded checkpoint (tests/fsdp_hold.py holds the
    # ranks there after their shards are on disk): checkpoint 1 stays the current one, the partial folder is
    # ignored, and the resumed run is bit-identical to the uninterrupted one
    config = recipe(flow_recipe(tiny_dir, tmp_path / "killed", save_every=1), tmp_path / "killed.yaml")
    (held,) = start(tmp_path, "tests.fsdp_hold", "train", "--config", str(config), env={"HOLD_AT_STEP": "2"})
    partial = tmp_path / "killed" / "checkpoints" / ".step_000002.tmp"
    deadline = time.time() + 300
    while held.poll() is None and time.time() < deadline and len(list(partial.glob("held.rank*"))) < 2:
        time.sleep(0.05)
    assert held.poll() is None, Path(held.err_path).read_text()[-3000:]
    sigkill_launch(held)
    assert list((partial / "sharded").glob("*.safetensors")) and not (partial / "trainer_state.json").exists()
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip() == "step_000001"
    launch(tmp_path, "evalsuite.cli", "train", "--config", str(config))
    resumed, uninterrupted = lora_file(tmp_path / "killed"), lora_file(tmp_path / "sharded")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert not partial.exists() and (tmp_path / "killed" / "checkpoints" / "step_000002").is_dir()
    hashed = (tmp_path / "killed" / "param_hash.rank0.jsonl").read_text().splitlines()
    assert [json.loads(h)["step"] for h in hashed] == [1, 2, 2]  # resumed at step 2, not from scratch
    again = metrics(tmp_path / "killed")
    assert [r["step"] for r in again] == ["1", "2"]  # the killed run's step-2 row was cut back and redone
    assert [{k: v for k, v in r.items() if k != "time/step_s"} for r in again] == [
        {k: v for k, v in r.items() if k != "time/step_s"} for r in rows
    ]

    # the export loads where a single-process LoRA loads (diffusers' load_lora_weights, i.e. --lora)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny_dir / "flux"))
    pipe.load_lora_weights(str(tmp_path / "sharded" / "final" / "flow_lora"))


def test_flow_lora_on_a_bf16_base_shards_with_fp32_adapters(tiny_dir, tmp_path):
    """The recipes' default: a bf16 transformer whose LoRA weights are fp32 masters, so one FSDP unit (a
    block) holds parameters of two dtypes. torch 2.13's FSDP2 takes that on CPU/gloo: one step equals one
    process and the adapter exports in fp32."""
    torch.set_num_threads(1)
    configs = {}
    for name in ("sharded", "single"):
        configs[name] = flow_recipe(tiny_dir, tmp_path / name, steps=1)
        configs[name].flow.dtype = "bfloat16"
    config = recipe(configs["sharded"], tmp_path / "s.yaml")
    launch(tmp_path, "evalsuite.cli", "train", "--config", str(config))
    flow_train.train(configs["single"])
    assert_steps_match(metrics(tmp_path / "sharded"), metrics(tmp_path / "single"), FLOW_KEYS)
    sharded, single = lora_file(tmp_path / "sharded"), lora_file(tmp_path / "single")
    assert {v.dtype for v in sharded.values()} == {torch.float32}
    assert_weights_match(sharded, single, {})


def test_flow_full_finetune_on_two_machines_equals_one_process(tiny_dir, tmp_path):
    """Full fine-tuning with the KL to a frozen sharded copy, on two "machines" (127.0.0.1, one process
    each); the exported pipeline/ then evaluates with ``evalsuite run --model`` on two machines too."""
    from tests.test_accelerate import _toy_plugin

    torch.set_num_threads(1)
    sharded = flow_recipe(tiny_dir, tmp_path / "sharded")
    sharded.flow.full_finetune, sharded.grpo.beta = True, 0.01
    launch(
        tmp_path, "evalsuite.cli", "train", "--config", str(recipe(sharded, tmp_path / "s.yaml")), machines=2
    )
    single_cfg = flow_recipe(tiny_dir, tmp_path / "single")
    single_cfg.flow.full_finetune, single_cfg.grpo.beta = True, 0.01
    flow_train.train(single_cfg)

    rows = metrics(tmp_path / "sharded")
    assert_steps_match(rows, metrics(tmp_path / "single"), FLOW_KEYS)
    assert float(rows[-1]["flow/kl"]) > 0  # the reference is a separate, frozen copy
    weights = "final/pipeline/transformer/diffusion_pytorch_model.safetensors"
    start = load_file(str(tiny_dir / "flux" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert_weights_match(
        load_file(str(tmp_path / "sharded" / weights)), load_file(str(tmp_path / "single" / weights)), start
    )

    site = tmp_path / "site"
    _toy_plugin(site)
    run_args = [
        "run",
        "--bench",
        "toy",
        "--model",
        str(tmp_path / "sharded" / "final" / "pipeline"),
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--limit",
        "4",
        "--images-per-prompt",
        "2",
        "--batch-size",
        "2",
        "--score-batch-size",
        "2",
        "--no-leaderboard",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "eval"),
    ]
    launch(tmp_path, "evalsuite.cli", *run_args, machines=2, path=(site,))
    scores = [json.loads(x)["score"] for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(scores) == 8 and np.isfinite(scores).all()


def test_a_ranks_share_of_the_rewriter_samples_is_one_process_rows(tiny):  # noqa: F811
    """``rows_of``: two ranks' shares of a step's batch, sampled apart, are the rows one process samples."""
    from evalsuite.harness.config import PolicyConfig
    from evalsuite.harness.rewriter import build_policy

    policy = build_policy(PolicyConfig(model=str(tiny["qwen2-lm"]), max_new_tokens=12), seed=0)
    prompts = ["a red cat", "two dogs", "a blue car", "a green apple"]
    whole = policy.sample(prompts, 2, seed=5)
    halves = [policy.sample(prompts[2 * r : 2 * r + 2], 2, seed=5, rows_of=(4 * r, 8)) for r in (0, 1)]
    assert halves[0].texts + halves[1].texts == whole.texts
    assert len(set(whole.texts)) > 4  # the draws differ between rows: the comparison means something
    unshared = policy.sample(prompts[2:], 2, seed=5)  # what rank 1 drew before: its own stream
    assert unshared.texts != whole.texts[4:]
    with pytest.raises(ValueError, match="do not fit"):
        policy.sample(prompts[2:], 2, seed=5, rows_of=(6, 8))


@pytest.mark.parametrize("full_finetune", [False, True])
def test_rewriter_sharded_equals_one_process(tiny, sft_adapter, tmp_path, full_finetune):  # noqa: F811
    """LoRA with token-mean aggregation, and full fine-tuning with RePrompt's KL (β 0.04) to a frozen
    sharded copy, from the SFT warm start (whose well-formed rewrites differ within a group: a learning
    signal). Each rank draws its share of the step's one sampling stream and token means are taken over
    all ranks' tokens, so the run is one process's."""
    from evalsuite.harness import train as rewriter_train

    torch.set_num_threads(1)

    def config(out: Path):
        cfg = make_rewriter_config(
            _with_sft(out, sft_adapter),
            tiny["qwen2-lm"],
            steps=2,
            log_param_hash=True,
            grpo__prompts_per_step=2,
            grpo__group_size=4,
            grpo__num_inner_epochs=1,
            grpo__minibatches=1,
            grpo__micro_batch_size=4,  # a rank's rows: kl, ratio_mean are token means per micro-batch
            grpo__beta=0.04,
            grpo__aggregation="sequence_mean" if full_finetune else "token_mean",
            optim__lr=1e-3,
            optim__eps=1e-3,  # see the module docstring
            policy__full_finetune=full_finetune,
        )
        cfg.rewards.components[0].name = "text_length"
        cfg.rewards.components[0].target = "tests.test_fsdp:TextLengthReward"
        return cfg

    launch(
        tmp_path,
        "evalsuite.harness.train",
        "--config",
        str(recipe(config(tmp_path / "sharded"), tmp_path / "r.yaml")),
    )
    rewriter_train.train(config(tmp_path / "single"))
    rows = metrics(tmp_path / "sharded")
    assert float(rows[0]["groups/zero_std_fraction"]) < 1  # a learning signal: the update is not zero
    single = metrics(tmp_path / "single")
    assert [r["completions/tokens"] for r in rows] == [r["completions/tokens"] for r in single]
    assert_steps_match(rows, single, ["loss", "kl", "reward/mean", "grad_norm"])
    assert float(rows[-1]["kl"]) > 0 or not full_finetune  # full: a separate frozen copy is the reference
    weights = "final/model/model.safetensors" if full_finetune else "final/adapter/adapter_model.safetensors"
    start = load_file(str(tiny["qwen2-lm"] / "model.safetensors")) if full_finetune else {}
    assert_weights_match(
        load_file(str(tmp_path / "sharded" / weights)), load_file(str(tmp_path / "single" / weights)), start
    )

    from evalsuite.harness.rewriter import load_rewriter  # the export loads as --rewriter does

    load_rewriter(str(tmp_path / "sharded" / "final"), device="cpu")
