"""The trainer contract: what ``evalsuite train`` needs of a training loop, so that trainers are found by
registered name (``evalsuite.trainers`` entry points) like rewards, and a third-party one plugs in the same
way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Trainer:
    """A training loop behind ``evalsuite train``.

    ``entry`` is its command line (``"module:function"``, called with the argv ``evalsuite train`` builds:
    ``--config PATH [--set K=V ...] [--out-dir DIR] [--steps N] [--no-resume]``; returns an exit code),
    imported only when it runs. ``claims`` says whether a recipe (its parsed YAML, or None when unreadable)
    is this trainer's, so ``evalsuite train --config`` picks the trainer without being told.
    """

    name: str
    description: str
    entry: str
    claims: Callable[[Any], bool]

    def run(self, argv: Sequence[str]) -> int:
        import importlib

        module, _, attr = self.entry.partition(":")
        return int(getattr(importlib.import_module(module), attr)(list(argv)) or 0)
