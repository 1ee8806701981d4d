"""The built-in trainers, as registry entries: the RePrompt rewriter loop and the flow loop (Flow-GRPO,
PromptRL, PromptLoop). A recipe with a ``mode`` or a ``flow`` section is a flow recipe; one whose keys are
all the rewriter's is a rewriter recipe."""

from __future__ import annotations

import dataclasses
from typing import Any

from evalsuite.trainer import Trainer


def _is_flow_recipe(data: Any) -> bool:
    from evalsuite.harness.flow_config import is_flow_config

    return is_flow_config(data)


def _is_rewriter_recipe(data: Any) -> bool:
    from evalsuite.harness.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return isinstance(data, dict) and not _is_flow_recipe(data) and set(data) <= fields


REWRITER = Trainer(
    name="rewriter",
    description="GRPO for an LM prompt rewriter (RePrompt)",
    entry="evalsuite.harness.train:main",
    claims=_is_rewriter_recipe,
)
FLOW = Trainer(
    name="flow",
    description="Flow-GRPO / PromptRL / PromptLoop on a flow model (LoRA)",
    entry="evalsuite.harness.flow_train:main",
    claims=_is_flow_recipe,
)
