"""Atomic, resumable checkpoints shared by the trainers: folder layout, RNG state, the ``latest`` pointer.

A checkpoint is written into ``checkpoints/.step_XXXXXX.tmp``, renamed when complete, and only then named by
``checkpoints/latest``: a kill at any moment leaves the previous checkpoint intact and current. Each rank
saves its own RNG state; what else goes in (adapters, optimizers, trainer state) is the caller's
``write_main`` callback, run on the main process.

Nothing in a checkpoint is unpickled: weights are safetensors, optimizer/EMA state is read with
``torch.load(weights_only=True)`` (``load_state``) and everything else (RNG states, trainer state) is JSON,
so resuming from a run folder someone gave you cannot execute code hidden in it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.errors import ConfigError
from evalsuite.store import atomic_write_json, atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain JSON data (no pickle: a checkpoint must not be able to run code)."""
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, key.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_state(path: Path) -> Any:
    """A ``torch.save``d state (optimizer, EMA) read with ``weights_only=True``: tensors and plain containers
    only, so a pickled payload in a checkpoint is refused before any of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "unsupported" in ln.lower()]
        reason = lines[0] if lines else type(e).__name__
        raise ConfigError(
            f"{path}: refused: it holds pickled objects, not only tensors and plain data, and unpickling "
            f"them could run code ({reason})"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise ConfigError(f"{path}: not a readable checkpoint file: {e}") from None


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
    out_dir: Path,
    step: int,
    accelerator: Any,
    write_main: Callable[[Path], None],
    keep: int | None,
    write_all: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically; ``write_all(tmp)`` runs on every rank (sharded state),
    then ``write_main(tmp)`` on the main process writes TRAINER_STATE last."""
    root = out_dir / CHECKPOINTS
    name = f"step_{step:06d}"
    tmp, final = root / f".{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    atomic_write_json(tmp / f"rng_rank{accelerator.process_index}.json", rng_state())
    if write_all is not None:
        write_all(tmp)
        accelerator.wait_for_everyone()
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
    rng_file = path / f"rng_rank{rank}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text()))
    elif (path / f"rng_rank{rank}.pt").is_file():  # older checkpoints pickled numpy's state
        raise ConfigError(
            f"{path / f'rng_rank{rank}.pt'}: refused: an older checkpoint whose RNG state is a pickle, "
            "which could run code when loaded; start over with --no-resume"
        )
