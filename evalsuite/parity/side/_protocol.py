"""Shared by the side scripts (run by a side venv's python, never imported by evalsuite): JSON request in,
JSON result out, plus the versions and file locations of what was really imported."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from typing import Any


def versions(distributions: dict[str, str]) -> dict[str, str]:
    """``{distribution: "version (module file)"}`` for each distribution and the module it provides."""
    found = {}
    for dist, module in distributions.items():
        mod = sys.modules.get(module)
        where = getattr(mod, "__file__", None) or "not imported"
        found[dist] = f"{importlib.metadata.version(dist)} ({where})"
    return found


def serve(score: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """``python <script> request.json result.json``: run ``score`` on the request, write its result."""
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    result = score(request)
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
