"""Every flow recipe in harness/recipes/ RUNS: the real file through ``evalsuite train --config`` for two
steps on the tiny checkpoints, offline.

A recipe that only loads can still fail at step 1 (a family option the sampler refuses, a reward that
cannot score the family's images, a batch geometry that does not divide). The overrides below change only
what a CPU needs: the model folder, the rewards' model paths, sizes, intervals, data and output folder.
Everything the recipe is about — sde_type, noise level, KL β, clip range, LoRA rank and targets, guidance,
negative prompt, lr, dtype, EMA — comes from the file unchanged.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "harness" / "recipes"

pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _reward_kwargs(name: str, tiny: Path) -> dict[str, object]:
    """The tiny checkpoint (and the smallest image size) for a reward the recipes name."""
    small = 28 * 28 * 4  # two 14-px patches a side: the Qwen-VL rewards' smallest input
    return {
        "geneval": {"model": str(tiny / "mask2former"), "clip_model": str(tiny / "open-clip-vit-l-14")},
        "pickscore": {"model": str(tiny / "clip")},
        "imagereward": {"model": str(tiny / "imagereward")},
        "promptecho": {"model": str(tiny / "qwen2.5-vl"), "min_pixels": small, "max_pixels": small},
        "editreward": {
            "model": str(tiny / "editreward" / "checkpoint"),
            "base_model": str(tiny / "editreward" / "base"),
            "min_pixels": small,
            "max_pixels": small,
        },
        "ocr": {},  # the OCR engine ships its own models
    }[name]


@dataclass(frozen=True)
class RecipeCase:
    """One recipe file and the tiny checkpoint of its family."""

    recipe: str
    tiny_model: str
    needs: tuple[str, ...] = ()  # optional packages a reward imports
    extra: dict[str, object] = field(default_factory=dict)


CASES = [
    RecipeCase("flow_sd3_geneval.yaml", "sd3"),
    RecipeCase("flow_promptecho_zimage.yaml", "zimage"),
    RecipeCase("flow_promptecho_qwenimage2512.yaml", "qwenimage-2512"),
    RecipeCase("flow_editreward_qwenimage_edit.yaml", "qwenimage-edit", extra={"flow.source_area": 32 * 32}),
    RecipeCase("flow_geneval.yaml", "flux"),
    RecipeCase("flow_kontext_editreward.yaml", "flux-kontext"),
    RecipeCase("flow_ocr.yaml", "flux", needs=("rapidocr",)),
    RecipeCase("flow_pickscore.yaml", "flux"),
    RecipeCase("flow_promptecho.yaml", "flux"),
]


def test_every_flow_recipe_has_a_run_case():
    assert sorted(c.recipe for c in CASES) == sorted(p.name for p in RECIPES.glob("flow_*.yaml"))


def _data_key(key: str, fallback: str | None, data_dir: Path) -> str:
    """The recipe's data file when the shared copy has it; else its held-out split (the Flow-GRPO train
    splits over 4 MB are not in ../shared/benchmarks, see flowgrpo/README.md)."""
    if (data_dir / key).is_file() or fallback is None:
        return key
    return fallback


def _edits(tmp_path: Path) -> Path:
    """An edit data set like the recipes' ``edits.jsonl``: instructions on small random sources."""
    rng = np.random.default_rng(0)
    path = tmp_path / "edits.jsonl"
    with open(path, "w") as f:
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"src{i}.png")
            row = {"prompt": f"make picture {i} brighter", "source_image": f"src{i}.png"}
            f.write(json.dumps(row) + "\n")
    return path


def _overrides(
    case: RecipeCase, recipe: dict, tiny: Path, request: pytest.FixtureRequest, out: Path
) -> list[str]:
    """``--set`` items: only what a two-step CPU run on tiny weights must change. Recipes reading an
    evalsuite data file need ../shared/benchmarks (skipped without it); edit recipes bring their own."""
    flow = recipe["flow"]
    sets: dict[str, object] = {
        "out_dir": str(out),
        "steps": 2,
        "save_every": 1000,
        "torch_threads": 1,
        "progress": False,
        "flow.model": str(tiny / case.tiny_model),
        "flow.num_steps": 2,
        "flow.eval_num_steps": 2,
        "grpo.group_size": 2,
        "grpo.prompts_per_step": 2,
        **case.extra,
    }
    if flow.get("height") is None:  # edit recipes: the source's size, scaled to max_area
        sets["flow.max_area"] = 32 * 32
    else:
        sets.update({"flow.height": 32, "flow.width": 32})
    sets["rewards.components"] = [
        {**c, "kwargs": {**c.get("kwargs", {}), **_reward_kwargs(c["name"], tiny)}}
        for c in recipe["rewards"]["components"]
    ]
    if recipe.get("eval_rewards"):
        sets["eval_every"] = 2
        sets["eval_prompts"] = 2
        sets["eval_rewards"] = [
            {**c, "kwargs": {**c.get("kwargs", {}), **_reward_kwargs(c["name"], tiny)}}
            for c in recipe["eval_rewards"]
        ]
    eval_key = (recipe.get("eval_data") or {}).get("key")
    if recipe["data"].get("key"):
        data_dir = request.getfixturevalue("data_dir")
        sets["data.key"] = _data_key(recipe["data"]["key"], eval_key, data_dir)
        sets["data.data_dir"] = str(data_dir)
    else:
        sets["data.path"] = str(_edits(out.parent))
    if eval_key:
        sets["eval_data.data_dir"] = str(request.getfixturevalue("data_dir"))
    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.recipe.removesuffix(".yaml"))
def test_the_recipe_runs_two_steps_on_tiny_weights(case, tiny_dir, request, tmp_path, capsys):
    from evalsuite.cli import main

    for package in case.needs:
        pytest.importorskip(package)
    path = RECIPES / case.recipe
    recipe = yaml.safe_load(path.read_text())
    out = tmp_path / "run"
    overrides = _overrides(case, recipe, tiny_dir, request, out)
    code = main(["train", "--config", str(path), *(x for o in overrides for x in ("--set", o))])
    assert code == 0, capsys.readouterr().err[-3000:]

    rows = _metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2]
    for row in rows:
        for key in ("reward/mean", "flow/loss", "flow/kl", "flow/grad_norm"):
            assert math.isfinite(float(row[key])), (key, row)
        # the on-policy self-test ran: the train-time recompute equals the rollout's log-probs
        assert float(row["selftest/max_abs_logp_diff"]) <= 1e-5, row
        for component in recipe["rewards"]["components"]:  # the reward scored every image of the family
            assert int(row[f"reward/{component['name']}/not_scored"]) == 0, row
    if recipe.get("eval_rewards"):
        evals = [k for k in rows[-1] if k.startswith("eval/")]
        assert evals and all(math.isfinite(float(rows[-1][k])) for k in evals), rows[-1]

    _check_lora_loads(path, overrides, out / "final" / "flow_lora")


def _check_lora_loads(recipe: Path, overrides: list[str], lora: Path) -> None:
    """The final LoRA loads back into a fresh policy of the recipe's family (its rank and targets): every
    saved tensor lands in the adapter, none is left over."""
    from safetensors.torch import load_file

    from evalsuite.harness.flow_config import load_flow_config
    from evalsuite.harness.flow_policy import FlowPolicy

    saved = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    config = load_flow_config(recipe, overrides)
    policy = FlowPolicy.from_pretrained(config.flow, seed=1)  # another init than the run's
    before = {k: v.clone() for k, v in policy.lora_state_dict().items()}  # views of the live weights
    policy.load_lora(str(lora))
    loaded = policy.lora_state_dict()
    assert sorted(loaded) == sorted(k.removeprefix("transformer.") for k in saved)
    changed = 0
    for key, tensor in saved.items():
        got = loaded[key.removeprefix("transformer.")]
        assert torch.equal(got, tensor.to(got.dtype)), key
        changed += not torch.equal(got, before[key.removeprefix("transformer.")])
    assert changed > 0  # the saved adapter replaced the fresh one (another seed)
