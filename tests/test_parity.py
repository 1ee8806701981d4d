"""The parity runner: its arithmetic, counting and table by hand; the cheap rows against the official
packages in their side venvs (``pytest -m parity``, run by ``.ci/run``; PyPI needed once, then the cache)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalsuite.parity import __main__ as cli
from evalsuite.parity.envs import ENVS, SideEnvError, build
from evalsuite.parity.models import MODEL_ROWS, PROBE_ROWS, Prepared, write_images
from evalsuite.parity.rules import count_junit
from evalsuite.parity.runner import TOLERANCE, RowResult, compare, run_model_row
from evalsuite.parity.table import load_results, render, save_results

CHEAP_ROWS = [name for name, row in MODEL_ROWS.items() if not row.full]


# -- by hand, no side venv ---------------------------------------------------------------------------------
def test_compare_is_relative_to_the_largest_official_score() -> None:
    # |diffs| = 0.5, 0.25, 1.0; largest |official| = 4 -> rel 1.0 / 4
    assert compare([1.5, -2.25, 5.0], [1.0, -2.0, 4.0]) == (1.0, 0.25)
    # a score near zero does not blow the ratio up: 1e-7 off a 1e-6 score, scale 2
    assert compare([1.1e-6, 2.0], [1e-6, 2.0]) == pytest.approx((1e-7, 5e-8), rel=1e-6)


@pytest.mark.parametrize(("ours", "official"), [([1.0], []), ([float("nan")], [1.0]), ([], [])])
def test_compare_refuses_what_cannot_be_compared(ours: list[float], official: list[float]) -> None:
    with pytest.raises(ValueError):
        compare(ours, official)


def test_junit_counting(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure/></testcase>'
        '<testcase name="c"><skipped/></testcase><testcase name="d"><error/></testcase>'
        '<testcase name="e"/></testsuite></testsuites>')
    assert count_junit(report) == (2, 2, 1, ["b", "d"])


def test_images_are_the_same_files_every_run(tmp_path: Path) -> None:
    a, b = write_images(tmp_path / "a"), write_images(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert len({p.read_bytes() for p in a}) == len(a)


def _fake_result(name: str, status: str, **kw) -> RowResult:
    return RowResult(name, "official", status, f"python -m evalsuite.parity --rows {name}", date="2026-01-01",
                     **kw)


def test_a_row_that_stops_matching_fails_the_command(tmp_path: Path, monkeypatch) -> None:
    outcomes = {"clipscore": _fake_result("clipscore", "MISMATCH", max_abs=1e-3, max_rel=1e-2),
                "pickscore": _fake_result("pickscore", "not run", error="pip install failed")}
    monkeypatch.setattr(cli, "run_model_row", lambda row, command: outcomes.get(row.name, _fake_result(
        row.name, "match", max_abs=0.0, max_rel=0.0)))
    assert cli.main(["--rows", "pickscore", "--docs", str(tmp_path)]) == 0  # not installable: recorded
    assert cli.main(["--rows", "clipscore", "--docs", str(tmp_path)]) == 1
    page = (tmp_path / "parity.md").read_text()
    assert "❌ MISMATCH" in page and "pip install failed" in page
    # both rows kept: a later run of one row leaves the other's last result in place
    assert set(load_results(tmp_path / "parity.json")) == {"clipscore", "pickscore"}


def test_table_shows_numbers_versions_and_rule_counts(tmp_path: Path) -> None:
    rows = {
        "imagereward": _fake_result("imagereward", "match", max_abs=8.66e-7, max_rel=2.16e-6, n_images=6,
                                    weights="full-size", versions={"image-reward": "1.5 (x)"}),
        "dpg-rules": _fake_result("dpg-rules", "match", passed=13, total=13),
    }
    save_results(tmp_path / "p.json", {k: v.to_json() for k, v in rows.items()}, list(rows))
    page = render(load_results(tmp_path / "p.json"), list(rows), {"imagereward": "a local vocab"},
                  {"image-reward": ("image-reward==1.5",)})
    assert "| 8.66e-07 | 2.16e-06 | ✅ match |" in page
    assert "13/13 pass" in page and "image-reward 1.5 (x)" in page and "shim: a local vocab" in page
    assert "- `image-reward`: `image-reward==1.5`" in page
    assert json.loads((tmp_path / "p.json").read_text())[0]["row"] == "imagereward"


def test_every_row_names_a_side_env_and_an_existing_script() -> None:
    side = Path(cli.__file__).parent / "side"
    for row in MODEL_ROWS.values():
        assert row.env in ENVS and (side / row.script).is_file(), row.name
    for probe in PROBE_ROWS.values():
        assert probe.env in ENVS and probe.reason, probe.name
    assert (side / "official_probe.py").is_file()


# -- against the official packages (side venvs; PyPI needed the first time) ------------------------------
def _env_or_skip(name: str) -> None:
    try:
        build(ENVS[name])
    except (SideEnvError, OSError) as e:
        pytest.skip(f"side venv {name!r} cannot be built here (offline?): {e}")


@pytest.mark.parity
@pytest.mark.parametrize("name", CHEAP_ROWS)
def test_cheap_row_matches_or_has_its_documented_cause(name: str) -> None:
    row = MODEL_ROWS[name]
    _env_or_skip(row.env)
    result = run_model_row(row, "test")
    assert result.status in ("match", "known gap"), f"{name}: {result.status} {result.error}"
    assert result.versions, "the side process reports what it imported"
    if result.status == "known gap":
        assert row.cause and result.max_rel > TOLERANCE
    else:
        assert result.max_rel <= TOLERANCE


@pytest.mark.parity
def test_a_changed_weight_is_caught() -> None:
    """The comparison is not blind: ours on a text projection with one output column scaled fails (a uniform
    scale would not do: the score is a cosine)."""
    import torch
    from safetensors.torch import load_file, save_file

    row = MODEL_ROWS["clipscore"]
    _env_or_skip(row.env)

    def perturbed(work: Path) -> Prepared:
        prepared = row.prepare(work)
        weights = next(Path(prepared.reward_kwargs["model"]).glob("*.safetensors"))
        state = load_file(str(weights))
        projection = state["text_projection"].clone()
        projection[:, 0] *= 1.5
        state["text_projection"] = projection.to(torch.float32)
        save_file(state, str(weights))
        return prepared

    result = run_model_row(dataclasses.replace(row, prepare=perturbed), "test")
    assert result.status == "MISMATCH" and result.max_rel > 100 * TOLERANCE
