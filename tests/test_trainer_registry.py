"""Trainers and prompt rewriters are registry kinds: ``evalsuite train`` finds the trainer by registered name
or by the recipe, and a third-party trainer plugs in through the ``evalsuite.trainers`` entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evalsuite.registry import get_trainer, registry
from evalsuite.trainer import Trainer
from tests.test_registry import write_distribution


@pytest.fixture
def trainer_site(tmp_path):
    site = tmp_path / "site"
    write_distribution(
        site, "evalsuite-echo-trainer", "0.1",
        {"evalsuite_echo.py": """
            import json, os
            from evalsuite.trainer import Trainer

            def main(argv):
                with open(os.environ["ECHO_OUT"], "w") as f:
                    json.dump(argv, f)
                return 0

            TRAINER = Trainer(name="echo", description="writes its argv", entry="evalsuite_echo:main",
                              claims=lambda data: isinstance(data, dict) and "echo" in data)
            """},
        """
        [evalsuite.trainers]
        echo = evalsuite_echo:TRAINER
        """,
    )
    return site


def run_cli(site, tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "ECHO_OUT": str(tmp_path / "argv.json")}
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_builtin_trainers_claim_their_recipes():
    rewriter, flow = get_trainer("rewriter"), get_trainer("flow")
    assert isinstance(rewriter, Trainer) and isinstance(flow, Trainer)
    assert flow.claims({"mode": "flow", "flow": {}}) and not rewriter.claims({"mode": "flow"})
    assert rewriter.claims({"policy": {}, "steps": 3}) and not flow.claims({"policy": {}, "steps": 3})
    assert not rewriter.claims({"echo": 1})  # someone else's recipe
    assert {"rewriter", "flow"} <= set(registry.names("trainers"))
    assert "reprompt" in registry.names("rewriters")


def test_a_plugin_trainer_runs_by_recipe_and_by_name(trainer_site, tmp_path):
    recipe = tmp_path / "echo.yaml"
    recipe.write_text("echo: 1\nsteps: 2\n")
    proc = run_cli(trainer_site, tmp_path, "train", "--config", str(recipe), "--steps", "5", "--no-resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--config", str(recipe), "--steps", "5",
                                                                 "--no-resume"]
    listing = run_cli(trainer_site, tmp_path, "list", "--kind", "trainers")
    assert "echo" in listing.stdout and "evalsuite-echo-trainer 0.1" in listing.stdout


def test_a_recipe_two_trainers_take_needs_a_name(trainer_site, tmp_path):
    recipe = tmp_path / "both.yaml"
    recipe.write_text("mode: flow\necho: 1\n")
    proc = run_cli(trainer_site, tmp_path, "train", "--config", str(recipe))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "several registered trainers take this recipe (echo, flow)" in proc.stderr
    assert "--trainer" in proc.stderr
    named = run_cli(trainer_site, tmp_path, "train", "--config", str(recipe), "--trainer", "echo")
    assert named.returncode == 0, named.stderr[-2000:]


def test_run_loads_a_rewriter_through_the_registry(monkeypatch, tmp_path):
    """``evalsuite run --rewriter PATH`` goes through the registered loader, so a plugin rewriter can
    replace it; the loader gets the path, device and dtype."""
    from evalsuite.registry import load_rewriter

    calls = []
    registry.register("rewriters", "test-rewriter", lambda path, **kw: calls.append((path, kw)) or "R")
    try:
        assert load_rewriter("some/dir", "test-rewriter", device="cpu", dtype="float32") == "R"
    finally:
        registry._entries["rewriters"].pop("test-rewriter")
    assert calls == [("some/dir", {"device": "cpu", "dtype": "float32"})]
