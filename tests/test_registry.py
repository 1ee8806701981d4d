"""Registry: built-ins, lookups, and third-party plugins found through entry points."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from evalsuite import PluginError, Sample, UnknownNameError, get_reward
from evalsuite.registry import Registry, registry


def write_distribution(
    site: Path, name: str, version: str, modules: dict[str, str], entry_points: str
) -> None:
    """Lay out an installed distribution exactly as pip does: modules plus a .dist-info folder."""
    for rel, source in modules.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (info / "RECORD").write_text("")


@pytest.fixture
def plugin_site(tmp_path):
    site = tmp_path / "site"
    write_distribution(
        site, "evalsuite-redness", "0.3.1",
        {"evalsuite_redness/__init__.py": """
            from evalsuite import Reward, Score

            class Redness(Reward):
                name = "redness"

                def _score_batch(self, samples):
                    return [Score(s.image.getpixel((0, 0))[0] / 255.0, {"pixel": s.image.getpixel((0, 0))})
                            for s in samples]
            """},
        """
        [evalsuite.rewards]
        redness = evalsuite_redness:Redness
        """,
    )
    write_distribution(
        site, "evalsuite-broken", "1.0",
        {"evalsuite_broken.py": "raise ImportError('needs libfoo, which is not installed')\n"},
        """
        [evalsuite.rewards]
        broken = evalsuite_broken:Broken
        [evalsuite.benchmarks]
        broken_bench = evalsuite_broken:Bench
        """,
    )
    return site


def test_builtins_are_listed_and_loadable():
    names = registry.names("rewards")
    assert {"brightness", "multi"} <= set(names)
    assert "diffusers" in registry.names("generators")
    entry = registry.entry("rewards", "brightness")
    assert entry.source == "built-in" and entry.load().__name__ == "Brightness"


def test_unknown_name_lists_what_exists():
    with pytest.raises(UnknownNameError, match="registered: .*brightness"):
        get_reward("no_such_reward")
    with pytest.raises(ValueError):
        registry.names("metrics")


def test_runtime_registration_and_decorator():
    reg = Registry(builtins={})

    @reg.register("rewards", "const")
    class Const:
        pass

    assert reg.get("rewards", "const") is Const and reg.entry("rewards", "const").source == "runtime"
    assert reg.entry("rewards", "const").target_name == f"{__name__}:{Const.__qualname__}"


def test_list_shows_a_reward_registered_at_runtime(capsys):
    """``evalsuite list`` after ``register_reward`` on a class (not a "module:attr" string) lists it."""
    from evalsuite.cli import main
    from evalsuite.registry import register_reward
    from evalsuite.rewards.brightness import Brightness

    register_reward("runtime_brightness")(Brightness)
    try:
        assert main(["list", "--kind", "rewards"]) == 0
    finally:
        registry._entries["rewards"].pop("runtime_brightness")
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "runtime_brightness" in ln)
    assert "runtime" in line and "ok" in line


def test_plugin_discovered_and_runs_through_registry(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    reg = Registry()
    entry = reg.entry("rewards", "redness")
    assert entry.source == "evalsuite-redness 0.3.1"
    reward = reg.get("rewards", "redness")(batch_size=2)
    out = reward.score([Sample("r", "red", Image.new("RGB", (4, 4), (255, 0, 0))),
                        Sample("b", "blue", Image.new("RGB", (4, 4), (0, 0, 255))),
                        Sample("bad", "x", b"garbage")])
    assert out.scores[:2] == [1.0, 0.0] and not out.applicable[2] and "'bad'" in out.errors[2]

    # a plugin that raises on import is reported by name and does not break the others
    expected = "'broken' from evalsuite-broken 1.0 is broken: ImportError: needs libfoo"
    with pytest.raises(PluginError, match=expected):
        reg.get("rewards", "broken")
    checked = {(e.kind, e.name): e for e in reg.check()}
    assert checked[("rewards", "broken")].error and checked[("benchmarks", "broken_bench")].error
    assert checked[("rewards", "redness")].error is None
    assert checked[("rewards", "brightness")].error is None


def test_plugin_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_distribution(site, "evil", "1.0", {"evil.py": "X = 1\n"},
                       "[evalsuite.rewards]\nbrightness = evil:X\n")
    monkeypatch.syspath_prepend(str(site))
    reg = Registry()
    assert reg.entry("rewards", "brightness").source == "built-in"
    assert any("evil 1.0" in c for c in reg.conflicts)


def test_cli_list_reports_plugins_and_broken_ones(plugin_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "evalsuite.cli", "list", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)["entries"]}
    assert rows[("reward", "redness")]["source"] == "evalsuite-redness 0.3.1"
    assert rows[("reward", "redness")]["status"] == "ok"
    assert rows[("reward", "broken")]["status"].startswith("broken: ImportError: needs libfoo")
    assert rows[("reward", "brightness")]["source"] == "built-in"

    table = subprocess.run([sys.executable, "-m", "evalsuite.cli", "list"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "evalsuite-redness 0.3.1" in table.stdout
    assert "broken: ImportError" in table.stdout


@pytest.mark.parametrize("check", ["parity", "batch_invariance", "determinism", "dtype", "bad_input"])
def test_plugin_reward_passes_the_shared_tester(plugin_site, monkeypatch, check):
    from tests.reward_tester import CHECKS, RewardSpec
    from tests.test_rewards import _mixed_samples

    monkeypatch.syspath_prepend(str(plugin_site))
    factory = Registry().get("rewards", "redness")  # found through its entry point

    def reference(reward, samples):  # independent: numpy on the raw pixels
        import numpy as np

        return [float(np.asarray(s.image.convert("RGB"))[0, 0, 0]) / 255.0 for s in samples]

    spec = RewardSpec("redness (plugin)", lambda **kw: factory(**kw), _mixed_samples, reference, atol=1e-12)
    CHECKS[check](spec)


def test_kinds_read_as_words_in_messages():
    from evalsuite.registry import KINDS, singular

    words = [singular(k) for k in ("rewards", "flow_families", "scorers")]
    assert words == ["reward", "flow_family", "scorer"]
    assert all(singular(k) and not singular(k).endswith("s") for k in KINDS)
    with pytest.raises(UnknownNameError, match="no flow_family named 'nope'"):
        registry.get("flow_families", "nope")
