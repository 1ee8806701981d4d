"""The trainers' data: prompt rows, the step's global batch, an editing row's source image, SFT pairs.

A step's prompts are a pure function of the step (seeded epochs), so resuming needs no data-loader state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.config import DataConfig, SFTConfig
from evalsuite.seeding import derive_seed


def load_prompts(cfg: DataConfig) -> list[dict[str, Any]]:
    """Rows {"id", "prompt", "metadata"} from inline prompts, a .jsonl/.txt file or an evalsuite data key."""
    if sum(x is not None for x in (cfg.prompts, cfg.path, cfg.key)) != 1:
        raise ConfigError("data: give exactly one of prompts, path or key")
    if cfg.prompts is not None:
        raw: list[Any] = list(cfg.prompts)
    else:
        if cfg.key is not None:
            from evalsuite.data import resolve

            path = resolve(cfg.key, cfg.data_dir)
        else:
            path = Path(cfg.path)  # type: ignore[arg-type]
            if not path.is_file():
                raise ConfigError(f"data.path {path} is not a file")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        raw = [json.loads(ln) for ln in lines] if path.suffix == ".jsonl" else [ln.strip() for ln in lines]
    rows = []
    for i, item in enumerate(raw[: cfg.limit] if cfg.limit else raw):
        item = {"prompt": item} if isinstance(item, str) else dict(item)
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise ConfigError(f"data row {i}: needs a non-empty 'prompt' string, got {item!r}")
        prompt, row_id = item.pop("prompt"), str(item.pop("id", i))
        rows.append({"id": row_id, "prompt": prompt, "metadata": item})
    if not rows:
        raise ConfigError("data: no prompts")
    return rows


def step_prompts(rows: list[dict], step: int, per_step: int, seed: int, shuffle: bool) -> list[dict]:
    """The global batch of ``step``: positions step·per_step … in an endless stream of seeded epochs."""
    out, perms = [], {}
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(pos, len(rows))
        if epoch not in perms:
            rng = np.random.default_rng(derive_seed(seed, "data", epoch))
            perms[epoch] = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
        out.append({**rows[int(perms[epoch][k])], "position": pos})
    return out


def data_folder(cfg: DataConfig) -> Path | None:
    """Where relative paths in the rows (an editing row's source image) are read from: the data file's."""
    return Path(cfg.path).parent if cfg.path else None


def load_source(row: dict[str, Any], base: Path | None) -> Image.Image:
    """An editing prompt's source image: metadata ``source_image``, a path (relative: to the data file)."""
    ref = row["metadata"].get("source_image")
    if not isinstance(ref, str):
        raise ConfigError(f"data row {row['id']}: an editing model needs a 'source_image' path")
    path = Path(ref)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ConfigError(f"data row {row['id']}: cannot read source image {path}: {e}") from None


def load_sft_pairs(cfg: SFTConfig) -> list[dict[str, str]]:
    """(prompt, rewrite[, think]) pairs, inline or from a .jsonl file."""
    if cfg.pairs is not None and cfg.path is None:
        pairs = list(cfg.pairs)
    elif cfg.path is not None and cfg.pairs is None:
        lines = Path(cfg.path).read_text(encoding="utf-8").splitlines()
        pairs = [json.loads(ln) for ln in lines if ln.strip()]
    else:
        raise ConfigError("sft: give exactly one of pairs or path when sft.steps > 0")
    for i, p in enumerate(pairs):
        if not (isinstance(p.get("prompt"), str) and isinstance(p.get("rewrite"), str)):
            raise ConfigError(f"sft pair {i}: needs 'prompt' and 'rewrite' strings")
    return pairs
