"""``python -m tests.fsdp_hold ARGS``: ``evalsuite.cli ARGS`` with the sharded checkpoint write of step
``$HOLD_AT_STEP`` held half done, for the kill test in tests/test_fsdp.py.

Once every rank has written its DCP shards of that checkpoint (but before the trainer state that completes
it, and before the rename that publishes it), each rank drops ``held.rank{R}`` into the half-written folder
and sleeps: the test kills the launch at that known point of the write instead of racing a timer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from evalsuite.harness import flow_checkpoint

_save_sharded = flow_checkpoint.save_sharded
HOLD = f".step_{int(os.environ['HOLD_AT_STEP']):06d}.tmp"


def save_then_hold(folder: Path, models: dict[str, Any]) -> None:
    _save_sharded(folder, models)
    if folder.name == HOLD:
        (folder / f"held.rank{torch.distributed.get_rank()}").write_text("")
        while True:  # until the test's SIGKILL
            time.sleep(1)


flow_checkpoint.save_sharded = save_then_hold

if __name__ == "__main__":
    from evalsuite.cli import main

    sys.exit(main())
