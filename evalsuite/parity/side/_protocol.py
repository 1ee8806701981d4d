"""Shared by the side scripts (run by a side venv's python, never imported by evalsuite): JSON request in,
JSON result out, plus the versions and file locations of what was really imported."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from typing import Any


def versions(distributions: dict[str, str]) -> dict[str, str]:
    """``{distribution: "version (where its module was imported from)"}``: the side venv's own copy, or the
    one shared from our venv through the ``.pth`` line (proof that a pin really shadows ours)."""
    found = {}
    for dist, module in distributions.items():
        where = getattr(sys.modules.get(module), "__file__", None)
        origin = ("not imported" if where is None else "side venv" if where.startswith(sys.prefix)
                  else "shared from our venv")
        found[dist] = f"{importlib.metadata.version(dist)} ({origin})"
    return found


def serve(score: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """``python <script> request.json result.json``: run ``score`` on the request, write its result."""
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    result = score(request)
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
