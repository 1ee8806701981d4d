"""Atomic, resumable checkpoints shared by the trainers: folder layout, RNG state, the ``latest`` pointer.

A checkpoint is written into ``checkpoints/.step_XXXXXX.tmp``, renamed when complete, and only then named by
``checkpoints/latest``: a kill at any moment leaves the previous checkpoint intact and current. Each rank
saves its own RNG state; what else goes in (adapters, optimizers, trainer state) is the caller's
``write_main`` callback, run on the main process.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.errors import ConfigError
from evalsuite.store import atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint named by ``checkpoints/latest`` (written only after the folder is complete)."""
    pointer = out_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = out_dir / CHECKPOINTS / pointer.read_text().strip()
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(
            f"{pointer} names {path.name}, which is incomplete or missing; remove the pointer "
            "to start over or point it at an earlier complete checkpoint"
        )
    return path


def write_checkpoint(
    out_dir: Path, step: int, accelerator: Any, write_main: Callable[[Path], None], keep: int | None
) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically; ``write_main(tmp)`` writes TRAINER_STATE last."""
    root = out_dir / CHECKPOINTS
    name = f"step_{step:06d}"
    tmp, final = root / f".{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        write_main(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, name + "\n")
        if keep is not None:
            done = sorted(p for p in root.glob("step_*") if p.is_dir())
            for old in done[: max(len(done) - keep, 0)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def restore_rng(path: Path, rank: int) -> None:
    """This rank's RNG state from a checkpoint (a checkpoint written by fewer ranks has none for it)."""
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
