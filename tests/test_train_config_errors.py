"""A train recipe naming a model that is not there, or a reward option that does not exist, stops
``evalsuite train`` with one line naming the config key and why, not a Hugging Face traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.test_flow_train import make_config as make_flow_config
from tests.test_train import make_config

pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def rewriter_recipe(tiny_dir, tmp_path) -> Path:
    config = make_config(tmp_path / "run", tiny_dir / "qwen2-lm", steps=1, sft__steps=0)
    path = tmp_path / "rewriter.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


@pytest.fixture
def flow_recipe(tiny_dir, tmp_path) -> Path:
    data = make_flow_config(tmp_path / "flow", tiny_dir, steps=1).to_dict()
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _train_error(capsys, recipe: Path, *overrides: str) -> str:
    """The one error line of ``evalsuite train`` (exit code 2, no traceback)."""
    from evalsuite.cli import main

    capsys.readouterr()
    code = main(["train", "--config", str(recipe), *(x for o in overrides for x in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


def test_a_missing_policy_model_names_policy_model(rewriter_recipe, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "lm"
    line = _train_error(capsys, rewriter_recipe, f"policy.model={missing}")
    assert "policy.model" in line and str(missing) in line and "no such folder" in line


def test_an_uncached_hub_model_offline_says_so(rewriter_recipe, capsys):
    line = _train_error(capsys, rewriter_recipe, "policy.model=nobody-here/no-such-model")
    assert "policy.model" in line and "offline" in line and "cache" in line


def test_a_missing_generator_names_generator_model(rewriter_recipe, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "flux"
    line = _train_error(
        capsys, rewriter_recipe, "rewards.components=[{name: brightness}]", f"generator.model={missing}"
    )
    assert "generator.model" in line and "no such folder" in line


def test_a_misspelled_reward_option_names_the_key_and_the_options(rewriter_recipe, capsys):
    line = _train_error(
        capsys, rewriter_recipe, "rewards.components=[{name: brightness, kwargs: {targt: 0.5}}]"
    )
    assert "rewards.components[0].kwargs.targt" in line and "'target'" in line and "brightness" in line


def test_flow_recipes_name_flow_model_and_eval_reward_options(flow_recipe, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "flux"
    line = _train_error(capsys, flow_recipe, f"flow.model={missing}")
    assert "flow.model" in line and "no such folder" in line
    line = _train_error(
        capsys, flow_recipe, "eval_every=1", "eval_rewards=[{name: brightness, kwargs: {tagret: 1}}]"
    )
    assert "eval_rewards[0].kwargs.tagret" in line and "'target'" in line
