"""``evalsuite regress``: passes on an unchanged build, fails with a readable diff on a perturbed reward."""

import json

import numpy as np

from evalsuite.cli import main
from evalsuite.regress import compare, synthetic_fixtures


def test_fixtures_are_deterministic():
    a, b = synthetic_fixtures(3, 4), synthetic_fixtures(3, 4)
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(synthetic_fixtures(4, 4)[0].image))


def test_update_then_pass_then_fail_on_perturbation(tmp_path, monkeypatch, capsys):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({
        "fixtures": {"kind": "synthetic", "seed": 0, "count": 5},
        "rewards": {
            "brightness": {"atol": 1e-9, "rtol": 0, "scores": {}},
            "bright_mix": {"reward": "multi", "kwargs": {"weights": {"brightness": 2.0}}, "atol": 1e-9,
                           "rtol": 0, "scores": {}},
        },
    }))
    assert main(["regress", "--baseline", str(baseline), "--update"]) == 0
    pinned = json.loads(baseline.read_text())["rewards"]["brightness"]
    assert len(pinned["scores"]) == 5 and pinned["describe"]["name"] == "brightness"
    capsys.readouterr()
    assert main(["regress", "--baseline", str(baseline)]) == 0
    assert "2 rewards match" in capsys.readouterr().out

    import evalsuite.rewards.brightness as b
    monkeypatch.setattr(b, "LUMA", b.LUMA * np.array([1.0, 1.0, 1.02]))  # a "harmless" refactor
    assert main(["regress", "--baseline", str(baseline)]) == 1
    err = capsys.readouterr().err
    assert "DRIFT brightness:" in err and "DRIFT bright_mix:" in err and "fx00: baseline" in err
    assert main(["regress", "--baseline", str(baseline), "--reward", "brightness"]) == 1


def test_compare_reports_missing_and_na():
    pinned = {"atol": 0.1, "rtol": 0, "scores": {"a": 1.0, "b": None, "c": 2.0}}
    assert compare("r", pinned, {"a": 1.05, "b": None, "c": 2.0}) is None
    drift = compare("r", pinned, {"a": 1.5, "b": 0.3, "c": float("nan")})
    assert len(drift.lines) == 3 and "b: baseline None -> now 0.3" in drift.lines[1]
