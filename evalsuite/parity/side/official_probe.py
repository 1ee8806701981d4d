"""Imports an official package in its side venv and reports the versions it really got (for the rows that
install but are not measured yet: the table then shows what would run)."""

from __future__ import annotations

import importlib
from typing import Any

from _protocol import serve, versions


def probe(request: dict[str, Any]) -> dict[str, Any]:
    for module in request["imports"]:
        importlib.import_module(module)
    return {"scores": [], "versions": versions(request["dists"])}


if __name__ == "__main__":
    serve(probe)
