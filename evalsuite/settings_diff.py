"""Which settings differ between two runs, as ``key.path: old → new`` lines a user can act on."""

from __future__ import annotations

import json
from typing import Any

_MISSING = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else json.dumps(value, ensure_ascii=False, default=str)


def changed_settings(old: Any, new: Any, path: str = "") -> list[str]:
    """One ``path: old → new`` line per differing leaf of two JSON-like values (nested dicts are walked)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            lines += changed_settings(old.get(key, _MISSING), new.get(key, _MISSING), sub)
        return lines
    if old == new:
        return []
    return [f"{path or '(settings)'}: {_show(old)} → {_show(new)}"]
