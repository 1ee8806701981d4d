"""Resuming a run never mixes settings silently.

Each checkpoint's trainer state keeps the run's whole effective config. Before a resumed run writes
anything, ``check_resume`` compares the new config with it: the fields in ``RESUMABLE`` may change, any
other difference stops the run with every change listed, unless ``resume_override=true``, which applies
the new values from the checkpoint's step and records them in the manifest's ``history``.
``apply_optim_settings`` then makes the new optimizer values real: a loaded optimizer and LR scheduler
would otherwise carry on with the saved ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import ConfigError
from evalsuite.harness.checkpoint import TRAINER_STATE, latest_checkpoint
from evalsuite.harness.config import from_dict

# Dotted config keys that may change on resume, and why that is safe: none of them changes what a
# training step computes, only how long the run goes on, where it is and what it reports.
RESUMABLE: dict[str, str] = {
    "steps": "extends or shortens the run; the LR schedule does not depend on it (scaffold.Warmup)",
    "out_dir": "where the run folder is (it may have been moved or mounted elsewhere)",
    "resume": "true whenever a checkpoint is resumed",
    "resume_override": "only says whether other changes are allowed",
    "save_every": "checkpoint cadence",
    "keep_checkpoints": "how many old checkpoints stay on disk",
    "log_samples_every": "logging cadence (rewriter samples)",
    "logged_samples": "how many rewriter samples are logged",
    "log_images_every": "logging cadence (flow images)",
    "logged_images": "how many flow images are logged",
    "eval_every": "held-out evaluation cadence (evaluation never feeds the update)",
    "tensorboard": "output only",
    "wandb": "output only",
    "wandb_project": "output only",
    "progress": "output verbosity (progress bar)",
    "log_param_hash": "extra logging (a hash of the weights)",
    "torch_threads": "how many CPU threads, not what is computed",
    "rewards.overlap": "when rewards run, not what they compute (identical results, docs/training.md)",
    "rewards.timeout_s": "when a reward call counts as failed; results are never partial",
    "rewards.retries": "how often a failed reward call is tried again; results are never partial",
    "rewards.retry_backoff_s": "how long to wait before a retry",
}

_ABSENT = "(absent)"


def config_changes(old: Any, new: Any, key: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs, ``RESUMABLE`` keys left out."""
    if key in RESUMABLE:
        return {}
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in [*old, *(k for k in new if k not in old)]:
            out.update(config_changes(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{key}.{k}" if key else k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = {}
        for i, (a, b) in enumerate(zip(old, new)):
            out.update(config_changes(a, b, f"{key}[{i}]"))
        return out
    return {} if old == new else {key: (old, new)}


def _saved_config(ckpt: Path, state: dict[str, Any], config: Any) -> dict[str, Any]:
    """The checkpoint's config, completed with today's defaults for fields it predates; checkpoints
    written before configs were saved in them fall back to the run's config.yaml (not yet overwritten)."""
    saved = state.get("config")
    if saved is None:
        legacy = ckpt.parent.parent / "config.yaml"
        if not legacy.is_file():
            raise ConfigError(
                f"{ckpt}: no saved config to compare with; set resume_override=true to resume anyway "
                "or start over with --no-resume"
            )
        saved = yaml.safe_load(legacy.read_text()) or {}
    return from_dict(type(config), saved, f"{ckpt} (saved config)").to_dict()


def _previous_history(out_dir: Path, step: int) -> list[dict[str, Any]]:
    """The manifest's earlier config changes, cut back to the resumed step like the metrics."""
    path = out_dir / "manifest.json"
    try:
        history = json.loads(path.read_text()).get("history") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [h for h in history if isinstance(h, dict) and int(h.get("step", 0)) < step]


def check_resume(config: Any, out_dir: Path) -> list[dict[str, Any]]:
    """Compare ``config`` with the latest checkpoint's (before anything is written) and return the
    manifest's history of config changes; refuse differences unless ``resume_override`` is set."""
    ckpt = latest_checkpoint(out_dir) if config.resume else None
    if ckpt is None:
        return []
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    step = int(state["step"])
    changes = config_changes(_saved_config(ckpt, state, config), dataclasses.asdict(config))
    history = _previous_history(out_dir, step)
    if not changes:
        return history
    listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())
    if not config.resume_override:
        raise ConfigError(
            f"{ckpt} was trained with other settings ({listed}); keep them, start over with --no-resume, "
            f"or set resume_override=true to apply the new values from step {step}"
        )
    return [*history, {"step": step, "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()}}]


def apply_optim_settings(optimizer: Any, scheduler: Any, optim: Any) -> None:
    """After loading a checkpoint: the configured lr, betas, eps, weight decay and warmup, not the saved
    ones (``load_state_dict`` restores those). Unchanged settings give the very same values."""
    scheduler.base_lrs = [optim.lr for _ in optimizer.param_groups]
    for fn in scheduler.lr_lambdas:
        if hasattr(fn, "warmup"):
            fn.warmup = optim.warmup_steps
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group.update(
            initial_lr=optim.lr,
            lr=optim.lr * fn(scheduler.last_epoch),
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
