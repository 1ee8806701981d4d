"""What a training run reports: metrics.csv (+ TensorBoard, wandb), samples.jsonl, image grids, weight hashes.

A resumed run cuts its logs back to the resumed step, so they equal an uninterrupted run's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.harness.rewards import finite_stats
from evalsuite.store import JsonlLog, atomic_write_bytes, atomic_write_text, jsonable


class MetricsLog:
    """metrics.csv (+ TensorBoard, wandb when available) and samples.jsonl; on resume both are cut back
    to the resumed step so a resumed run's logs equal an uninterrupted run's."""

    def __init__(self, out_dir: Path, config: Any, start_step: int) -> None:
        self.csv_path = out_dir / "metrics.csv"
        self.samples = JsonlLog(out_dir / "samples.jsonl")
        self.fields: list[str] | None = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or []) or None
                kept = [r for r in reader if int(r["step"]) <= start_step]
            self._rewrite(kept)
        kept_samples = [r for r in self.samples.read() if r["step"] <= start_step]
        if self.samples.path.exists():
            text = "".join(json.dumps(jsonable(r), ensure_ascii=False) + "\n" for r in kept_samples)
            atomic_write_text(self.samples.path, text)
        self.tb = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                self.tb = None
        self.wandb = None
        if config.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=config.wandb_project,
                    dir=str(out_dir),
                    config=config.to_dict(),
                    id=_wandb_id(out_dir),
                    resume="allow",
                )
            except ImportError:
                warnings.warn(
                    "wandb=true but wandb is not installed: logging to CSV/TensorBoard only", stacklevel=2
                )
                self.wandb = None

    def _rewrite(self, rows: list[dict]) -> None:
        if self.fields is None:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buf.getvalue())

    def log(self, metrics: dict[str, Any]) -> None:
        new = not self.csv_path.exists() or self.fields is None
        if self.fields is None:
            self.fields = list(metrics)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in metrics.items()})
            f.flush()
            os.fsync(f.fileno())
        step = int(metrics["step"])
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v  # repr: shortest exact round trip


def _wandb_id(out_dir: Path) -> str:
    path = out_dir / "wandb_id.txt"
    if not path.exists():
        atomic_write_text(path, hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12])
    return path.read_text().strip()


def reduce_over_ranks(
    stats: dict[str, float], accelerator: Any, extremes: tuple[str, ...]
) -> dict[str, float]:
    """Update statistics averaged over ranks, in key order; keys ending in one of ``extremes`` take the
    minimum (``…ratio_min``) or maximum (the rest) over ranks instead: extremes must not be averaged."""
    keys = sorted(stats)
    local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes == 1:
        return dict(zip(keys, local.cpu().tolist()))
    out = dict(zip(keys, accelerator.reduce(local, reduction="mean").cpu().tolist()))
    for k in [k for k in keys if k.endswith(extremes)]:
        every = accelerator.gather(torch.tensor([stats[k]], dtype=torch.float64, device=accelerator.device))
        out[k] = float(every.min() if k.endswith("ratio_min") else every.max())
    return out


def reward_component_metrics(raw: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean, std and the count of unscored samples of every reward component (all ranks' values)."""
    metrics: dict[str, Any] = {}
    for name, values in raw.items():
        mean, std, bad = finite_stats(values)
        metrics[f"reward/{name}/mean"] = mean
        metrics[f"reward/{name}/std"] = std
        metrics[f"reward/{name}/not_scored"] = bad
    return metrics


def log_image_grid(
    out_dir: Path, step: int, images: list[Image.Image], per_row: int, records: list[dict], logger: MetricsLog
) -> None:
    """A grid PNG per logged step (``per_row`` images a row: a group) and a JSONL record per image."""
    if not images:
        return
    w, h = images[0].size
    n_rows = math.ceil(len(images) / per_row)
    grid = Image.new("RGB", (w * per_row, h * n_rows))
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((i % per_row) * w, (i // per_row) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(out_dir / "images" / f"step_{step:06d}.png", buf.getvalue())
    if logger.tb is not None:
        logger.tb.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    logger.samples.append(records)


def param_hash(model: Any) -> str:
    """SHA-256 of the trainable parameters, in name order (equal on every rank iff the ranks agree; a
    collective under FSDP, where every rank hashes the gathered whole)."""
    from evalsuite.harness.sharding import full_tensor

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(full_tensor(p).float().numpy().tobytes())  # whole, when FSDP-sharded
    return h.hexdigest()


def log_param_hashes(out_dir: Path, rank: int, step: int, hashes: dict[str, str | None]) -> None:
    """One line per step in ``param_hash.rank{rank}.jsonl`` (ranks that agree write equal lines)."""
    JsonlLog(out_dir / f"param_hash.rank{rank}.jsonl").append([{"step": step, **hashes}])
