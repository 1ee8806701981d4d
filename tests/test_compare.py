"""``evalsuite compare RUN_A RUN_B``: deltas and intervals worked out by hand, refusals, warnings, a page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from evalsuite.cli import main
from evalsuite.compare import compare_runs, flips, largest_gaps, paired_normal_ci
from evalsuite.compare_page import write_compare_page
from evalsuite.errors import ConfigError
from tests.browser import charts_in, colour_pixels, external_urls, needs_chromium, rendered_dom, screenshot

Z975 = 1.959963984540054  # Φ⁻¹(0.975)
RED, BLUE = (220, 30, 30), (30, 30, 220)
# prompt -> tag, and per run the two images' scores (1 = correct): the case worked out in the tests below
PROMPTS = {"p0": ("a red apple", "dark"), "p1": ("two cats", "dark"), "p2": ("a blue car", "bright"),
           "p3": ("a dark night", "bright")}
SCORES_A = {"p0": [1, 1], "p1": [0, 1], "p2": [1, 0], "p3": [0, 0]}
SCORES_B = {"p0": [0, 1], "p1": [0, 1], "p2": [1, 1], "p3": [1, 0]}
FINGERPRINT = {"benchmark": {"name": "toy", "mode": "official"},
               "generator": {"model": "M", "num_inference_steps": 28, "guidance_scale": 3.5},
               "seed": 0, "images_per_prompt": 2, "limit": None}


def write_run(root: Path, scores: dict[str, list[int]], *, colour=RED, bench="toy", model="M",
              steps=28, prompts=PROMPTS) -> Path:
    """A run folder as `evalsuite run` writes it (samples.jsonl, results.json, manifest.json, images)."""
    rows = []
    for pid, values in scores.items():
        prompt, tag = prompts[pid]
        for k, v in enumerate(values):
            image = f"{pid}/samples/{k:04d}.png"
            (root / pid / "samples").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), colour).save(root / image)
            rows.append({"id": f"{pid}/{k}", "group": pid, "prompt": prompt, "image": image,
                         "metadata": {"tag": tag}, "tag": tag, "score": float(v), "correct": v == 1,
                         "reason": None if v else "include[0]: expected apple>=1, found 0", "error": None})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overall = sum(r["score"] for r in rows) / len(rows)
    (root / "results.json").write_text(json.dumps({"benchmark": {"name": bench}, "n_images": len(rows),
                                                   "summary": {"overall": overall, "errors": 0}}))
    fp = json.loads(json.dumps(FINGERPRINT))
    fp["benchmark"]["name"], fp["generator"]["model"] = bench, model
    fp["generator"]["num_inference_steps"] = steps
    (root / "manifest.json").write_text(json.dumps({"fingerprint": fp}))
    return root


@pytest.fixture
def runs(tmp_path):
    return (write_run(tmp_path / "a", SCORES_A, colour=RED, model="ckpt-A"),
            write_run(tmp_path / "b", SCORES_B, colour=BLUE, model="ckpt-B"))


def test_paired_normal_interval_by_hand():
    # d = [0.5, 0, -0.5, -0.5]: mean -0.125, squared deviations sum 0.6875, sd = sqrt(0.6875 / 3)
    mean, low, high = paired_normal_ci([0.5, 0.0, -0.5, -0.5])
    half = Z975 * math.sqrt(0.6875 / 3) / 2
    assert mean == pytest.approx(-0.125, abs=1e-12)
    assert (low, high) == pytest.approx((-0.125 - half, -0.125 + half), abs=1e-12)
    assert paired_normal_ci([0.3]) is None  # no spread from one pair
    assert paired_normal_ci([0.2, 0.2, 0.2])[1:] == pytest.approx((0.2, 0.2))


def test_task_deltas_are_means_of_per_prompt_differences(runs):
    cmp = compare_runs(*runs)
    by_task = {d.task: d for d in cmp.deltas}
    assert list(by_task) == ["dark", "bright", "all prompts"]
    # per prompt (mean of its two images): A 1, .5, .5, 0; B .5, .5, 1, .5 -> d .5, 0, -.5, -.5
    dark = by_task["dark"]
    assert (dark.prompts, dark.mean_a, dark.mean_b, dark.delta) == (2, 0.75, 0.5, 0.25)
    half = Z975 * (math.sqrt(0.125) / math.sqrt(2))  # d = [.5, 0]: sd = sqrt(2 * .25² / 1)
    assert dark.ci == pytest.approx((0.25 - half, 0.25 + half), abs=1e-12)
    assert by_task["bright"].delta == -0.5 and by_task["bright"].ci == pytest.approx((-0.5, -0.5))
    every = by_task["all prompts"]
    assert every.prompts == 4 and every.delta == pytest.approx(-0.125, abs=1e-12)
    assert every.ci == pytest.approx(paired_normal_ci([0.5, 0.0, -0.5, -0.5])[1:], abs=1e-12)
    assert cmp.warnings == []  # only the model differs: that is what is being compared


def test_disagreements_name_the_flipped_samples_and_the_largest_gaps(runs):
    cmp = compare_runs(*runs)
    assert flips(cmp) == (["p0/0"], ["p2/1", "p3/0"])
    assert largest_gaps(cmp, "score", 10) == [("p0/0", 1.0), ("p2/1", -1.0), ("p3/0", -1.0)]


def test_refuses_different_benchmarks_and_runs_with_no_prompt_in_common(tmp_path, runs):
    other = write_run(tmp_path / "geneval", SCORES_B, bench="geneval")
    with pytest.raises(ConfigError, match="different benchmarks.*'toy'.*'geneval'"):
        compare_runs(runs[0], other)
    renamed = {k: (f"another {p}", t) for k, (p, t) in PROMPTS.items()}
    disjoint = write_run(tmp_path / "disjoint", SCORES_B, prompts=renamed)
    with pytest.raises(ConfigError, match="share no prompts"):
        compare_runs(runs[0], disjoint)
    with pytest.raises(ConfigError, match="expected a run folder"):
        compare_runs(runs[0], tmp_path / "missing")


def test_warns_when_settings_differ_and_when_samples_have_no_partner(tmp_path, runs):
    fewer = write_run(tmp_path / "fewer", {k: v for k, v in SCORES_B.items() if k != "p3"}, steps=50)
    cmp = compare_runs(runs[0], fewer)
    assert len(cmp.shared) == 6
    assert any("generator.num_inference_steps: 28 → 50" in w for w in cmp.warnings), cmp.warnings
    assert any("2 of 8 samples" in w for w in cmp.warnings), cmp.warnings


def test_score_listings_compare_reward_by_reward(tmp_path, runs):
    """The JSONL of `evalsuite score --reward a,b` (written by the real code): a delta per reward."""
    from evalsuite import get_reward
    from evalsuite.scoring import read_items, score_items_by_reward

    listings = []
    for run in runs:
        rows, _ = score_items_by_reward({"brightness": lambda: get_reward("brightness")}, read_items(run))
        path = run / "scores.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        listings.append(path)
    cmp = compare_runs(*listings)
    (d,) = cmp.deltas
    luma = lambda rgb: (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255  # noqa: E731
    assert d.metric == "brightness" and d.prompts == 4
    assert d.delta == pytest.approx(luma(RED) - luma(BLUE), abs=1e-3)
    with pytest.raises(ConfigError, match="different benchmarks"):
        compare_runs(runs[0], listings[1])


def test_cli_writes_the_page_and_refuses_with_a_message(tmp_path, runs, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs[0]), str(runs[1]), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "score dark: A 0.7500 B 0.5000 delta +0.2500" in text and str(out / "index.html") in text
    page = (out / "index.html").read_text()
    assert "paired normal over prompts" in page and "A correct, B failed: 1" in page
    assert "B correct, A failed: 2" in page and "../a/p0/samples/0000.png" in page
    data = json.loads((out / "compare.json").read_text())
    assert data["a_correct_b_failed"] == ["p0/0"] and data["deltas"][0]["task"] == "dark"
    other = write_run(tmp_path / "geneval", SCORES_B, bench="geneval")
    assert main(["compare", str(runs[0]), str(other)]) == 1
    assert "different benchmarks" in capsys.readouterr().err


@needs_chromium
def test_page_in_chromium_shows_the_chart_and_both_sides(tmp_path, runs):
    cmp = compare_runs(*runs)
    page = write_compare_page(cmp, tmp_path / "cmp")
    dom = rendered_dom(page, tmp_path)
    charts = charts_in(dom)
    assert set(charts) == {"delta-score"} and charts["delta-score"] > 10, charts
    assert dom.count("class=\"pair\"") == 1 + 2 + 3 and not external_urls(dom)
    pixels = screenshot(page, tmp_path / "compare.png", height=2400)
    assert colour_pixels(pixels, RED) > 3 * 150 * 150 and colour_pixels(pixels, BLUE) > 3 * 150 * 150
