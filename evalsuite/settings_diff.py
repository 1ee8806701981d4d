"""Which settings differ between two runs, as ``key.path: old → new`` lines a user can act on. One walk for
every resume guard (evaluation runs, pairwise comparisons, training checkpoints)."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

ABSENT = "(absent)"


def setting_changes(old: Any, new: Any, *, skip: Collection[str] = (), path: str = "") -> dict[str, tuple]:
    """``{dotted.path: (old, new)}`` for every differing leaf; dicts and equal-length lists are walked,
    a key missing on one side is ``ABSENT`` there, and paths in ``skip`` are left out."""
    if path in skip:
        return {}
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple] = {}
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            out.update(setting_changes(old.get(key, ABSENT), new.get(key, ABSENT), skip=skip, path=sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = {}
        for i, (a, b) in enumerate(zip(old, new)):
            out.update(setting_changes(a, b, skip=skip, path=f"{path}[{i}]"))
        return out
    return {} if old == new else {path or "(settings)": (old, new)}


def _show(value: Any) -> str:
    return value if value == ABSENT else json.dumps(value, ensure_ascii=False, default=str)


def describe_changes(changes: dict[str, tuple]) -> str:
    """``a.b: 1 → 2; c: "x" → "y"``"""
    return "; ".join(f"{key}: {_show(old)} → {_show(new)}" for key, (old, new) in changes.items())
