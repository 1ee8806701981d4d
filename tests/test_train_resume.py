"""Resuming a run: changed settings are refused or applied on purpose, and nothing in a checkpoint is
unpickled (a run folder from someone else must not run code)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from evalsuite.errors import ConfigError
from evalsuite.harness.config import OptimConfig
from tests.test_flow_train import make_config as make_flow_config
from tests.test_train import make_config

pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _rewriter_recipe(tiny_dir: Path, out_dir: Path, path: Path) -> Path:
    """A YAML recipe of the tiny rewriter run (no SFT, 2 steps at lr 1e-4, a checkpoint every step)."""
    config = make_config(out_dir, tiny_dir / "qwen2-lm", steps=2, save_every=1, sft__steps=0, optim__lr=1e-4)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def _record_optimizer_lrs(monkeypatch) -> list[float]:
    """The lr of every AdamW step actually taken (what the optimizer used, not what was logged)."""
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def _train_cli(*args: str) -> int:
    from evalsuite.cli import main

    return main(["train", *args])


def test_resume_with_changed_settings_is_refused_listing_every_difference(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = _rewriter_recipe(tiny_dir, out, tmp_path / "recipe.yaml")
    assert _train_cli("--config", str(recipe)) == 0
    before = {name: (out / name).read_text() for name in ("config.yaml", "manifest.json", "metrics.csv")}
    capsys.readouterr()

    code = _train_cli(
        "--config", str(recipe), "--steps", "3", "--set", "optim.lr=1e-3", "--set", "grpo.beta=0.02"
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "optim.lr: 0.0001 → 0.001" in err and "grpo.beta: 0.01 → 0.02" in err
    assert "steps:" not in err  # steps may change
    assert "resume_override=true" in err
    # Nothing was written: config.yaml still says what the checkpoints were trained with.
    assert {name: (out / name).read_text() for name in before} == before
    assert not (out / "checkpoints" / "step_000003").exists()

    # Only fields that may change (steps, cadence, verbosity) resume without a word.
    allowed = ("--steps", "3", "--set", "save_every=5", "--set", "progress=false")
    assert _train_cli("--config", str(recipe), *allowed) == 0
    assert json.loads((out / "manifest.json").read_text())["history"] == []


def test_resume_override_applies_the_new_values_and_records_them(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = _rewriter_recipe(tiny_dir, out, tmp_path / "recipe.yaml")
    assert _train_cli("--config", str(recipe)) == 0
    seen = _record_optimizer_lrs(monkeypatch)
    code = _train_cli(
        "--config", str(recipe), "--steps", "3", "--set", "optim.lr=1e-3", "--set", "resume_override=true"
    )
    assert code == 0
    assert seen and set(seen) == {1e-3}  # step 3 really trained at the new lr (not the checkpoint's 1e-4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["history"] == [{"step": 2, "changes": {"optim.lr": {"old": 1e-4, "new": 1e-3}}}]
    assert manifest["config"]["optim"]["lr"] == 1e-3
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    # The step-3 checkpoint carries the new settings: resuming further needs no override and keeps history.
    assert _train_cli("--config", str(recipe), "--steps", "4", "--set", "optim.lr=1e-3") == 0
    assert json.loads((out / "manifest.json").read_text())["history"] == manifest["history"]


def test_flow_resume_refuses_changes_and_override_sets_the_optimizer_lr(tiny_dir, tmp_path, monkeypatch):
    from evalsuite.harness import flow_train

    cfg = make_flow_config(tmp_path / "flow", tiny_dir, steps=2, save_every=1, optim=OptimConfig(lr=1e-4))
    flow_train.train(cfg)
    changed = replace(cfg, steps=3, optim=OptimConfig(lr=1e-3, warmup_steps=4))
    with pytest.raises(ConfigError) as refused:
        flow_train.train(changed)
    assert "optim.lr: 0.0001 → 0.001" in str(refused.value)
    assert "optim.warmup_steps: 0 → 4" in str(refused.value)
    assert yaml.safe_load((cfg_path := tmp_path / "flow" / "config.yaml").read_text())["optim"]["lr"] == 1e-4

    seen = _record_optimizer_lrs(monkeypatch)
    result = flow_train.train(replace(changed, resume_override=True))
    assert [m["step"] for m in result.metrics] == [3]
    assert seen and seen == pytest.approx([1e-3 * 0.75])  # the new lr and warmup, at scheduler step 2
    history = json.loads((tmp_path / "flow" / "manifest.json").read_text())["history"]
    assert [h["step"] for h in history] == [2] and set(history[0]["changes"]) == {
        "optim.lr",
        "optim.warmup_steps",
    }
    assert yaml.safe_load(cfg_path.read_text())["optim"]["lr"] == 1e-3


# ----------------------------------------------------------------------------------- no pickles


def _touch(path: str) -> None:
    """The pickled payload: if it ever runs, the marker file appears."""
    Path(path).write_text("payload ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_runs(tiny_dir, tmp_path):
    from evalsuite.harness.train import train

    out = tmp_path / "run"
    train(make_config(out, tiny_dir / "qwen2-lm", steps=1, save_every=1, sft__steps=0))
    ckpt = out / "checkpoints" / "step_000001"
    assert not list(ckpt.glob("rng_rank*.pt"))  # RNG states are JSON, python and numpy included
    rng = json.loads((ckpt / "rng_rank0.json").read_text())
    assert {"python", "numpy", "torch"} <= set(rng)

    marker = tmp_path / "marker"
    optimizer_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.save({**optimizer_state, "extra": _Payload(marker)}, ckpt / "optimizer.pt")
    with pytest.raises(ConfigError, match=r"optimizer\.pt: refused: .*pickled"):
        train(make_config(out, tiny_dir / "qwen2-lm", steps=2, save_every=1, sft__steps=0))
    assert not marker.exists()

    # An older checkpoint's pickled RNG state is refused too, not unpickled.
    torch.save(optimizer_state, ckpt / "optimizer.pt")
    (ckpt / "rng_rank0.json").unlink()
    torch.save({"numpy": _Payload(marker)}, ckpt / "rng_rank0.pt")
    with pytest.raises(ConfigError, match=r"rng_rank0\.pt: refused"):
        train(make_config(out, tiny_dir / "qwen2-lm", steps=2, save_every=1, sft__steps=0))
    assert not marker.exists()


def test_a_flow_checkpoint_with_a_pickled_ema_is_refused(tiny_dir, tmp_path):
    from evalsuite.harness import flow_train

    base = make_flow_config(tmp_path / "flow", tiny_dir, steps=1, save_every=1)
    cfg = replace(base, flow=replace(base.flow, ema=True))
    flow_train.train(cfg)
    ckpt = tmp_path / "flow" / "checkpoints" / "step_000001"
    marker = tmp_path / "marker"
    torch.save({"decay": 0.9, "shadow": _Payload(marker)}, ckpt / "ema.pt")
    with pytest.raises(ConfigError, match=r"ema\.pt: refused"):
        flow_train.train(replace(cfg, steps=2))
    assert not marker.exists()
