"""DrawBench paper metrics: the rules by hand, the upstream prompt file, reward selection, per-sample columns
and the per-category table; end to end through ``evalsuite run`` on tiny checkpoints."""

import json
import logging
import math

import pandas as pd
import pytest
from PIL import Image

from evalsuite import ConfigError, Sample, get_reward
from evalsuite.benchmarks import drawbench_rules as rules
from evalsuite.benchmarks.drawbench import DrawBench, read_categories
from evalsuite.cli import main
from evalsuite.data import resolve
from evalsuite.registry import registry

README_CATEGORY_COUNTS = {  # ../shared/benchmarks/drawbench/README.md
    "Reddit": 38, "Colors": 25, "Text": 21, "DALL-E": 20, "Descriptions": 20, "Positional": 20,
    "Counting": 19, "Conflicting": 10, "Gary Marcus et al.": 10, "Misspellings": 10, "Rare Words": 7,
}


# -- rules, worked by hand ---------------------------------------------------------------------------
def test_flowgrpo_normalization_divides_pickscore_by_26_and_unifiedreward_by_5_only():
    assert rules.normalize("pickscore", 22.36, "flowgrpo") == pytest.approx(0.86)  # 22.36 / 26
    assert rules.normalize("unifiedreward", 3.5, "flowgrpo") == pytest.approx(0.7)  # 3.5 / 5
    for name in ("imagereward", "aesthetic", "clipscore", "hpsv2", "brightness"):
        assert rules.normalize(name, 0.87, "flowgrpo") == 0.87
    assert rules.normalize("pickscore", 22.36, "raw") == 22.36
    assert rules.normalize("pickscore", None, "flowgrpo") is None
    with pytest.raises(ValueError, match="normalize must be one of"):
        rules.normalize("pickscore", 1.0, "diffusionnft")


def test_unique_prompts_strip_dedupe_and_keep_first_appearance_order():
    assert rules.unique_prompts(["b", " a ", "b", "", "a\n", "c"]) == ["b", "a", "c"]


def test_finite_mean_drops_failed_images():
    assert rules.finite_mean([1.0, math.nan, None, 3.0]) == 2.0
    assert math.isnan(rules.finite_mean([None, math.nan]))


def test_pick_rewards_skips_missing_defaults_but_refuses_unknown_explicit_ones():
    assert rules.pick_rewards(None, ["pickscore", "clipscore", "x"]) == (
        ["pickscore", "clipscore"], ["imagereward", "aesthetic", "hpsv2", "unifiedreward"])
    assert rules.pick_rewards(["x", "pickscore", "x"], ["pickscore", "x"]) == (["x", "pickscore"], [])
    with pytest.raises(ValueError, match=r"unknown rewards \['nope'\]; registered: pickscore, x"):
        rules.pick_rewards(["nope", "x"], ["x", "pickscore"])
    with pytest.raises(ValueError, match="empty"):
        rules.pick_rewards([], ["x"])


# -- the upstream file -------------------------------------------------------------------------------
def test_upstream_file_is_200_prompts_5_times_each(data_dir):
    lines = resolve("drawbench/test.txt", data_dir).read_text(encoding="utf-8").split("\n")
    prompts = rules.unique_prompts(lines)
    assert len(lines) == 1000 and len(prompts) == 200
    assert {lines.count(p) for p in prompts} == {rules.COPIES_PER_PROMPT}
    records = DrawBench(rewards="brightness").prompts(str(data_dir))
    assert [r.prompt for r in records] == prompts and records[7].id == "007"


def test_categories_from_jsonl_match_the_readme_and_csv_export_works(data_dir, tmp_path):
    bench = DrawBench(rewards="brightness", categories=data_dir / "drawbench" / "prompts.jsonl")
    counts = pd.Series([r.metadata["category"] for r in bench.prompts(str(data_dir))]).value_counts()
    assert counts.to_dict() == README_CATEGORY_COUNTS
    csv = tmp_path / "DrawBench.csv"
    first = "New York Skyline with 'Google Research Pizza Cafe' written with fireworks on the sky."
    csv.write_text(f'Prompts,Category\n"A red, round apple.",Colors\n{first},Gary Marcus et al. \n',
                   encoding="utf-8")
    assert read_categories(csv) == {"A red, round apple.": "Colors", first: "Gary Marcus et al."}
    with pytest.raises(ConfigError, match=r"no category for 199 prompts of .*test\.txt"):
        DrawBench(rewards="brightness", categories=csv).prompts(str(data_dir))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl: unreadable \(KeyError"):
        read_categories(bad)


# -- reward selection ----------------------------------------------------------------------------------
def test_unregistered_default_rewards_are_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.delitem(registry._entries["rewards"], "imagereward")
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        bench = DrawBench()
    missing = [r for r in rules.PAPER_REWARDS if r not in registry.names("rewards")]
    assert "imagereward" in missing and bench.skipped == missing
    assert list(bench.rewards) == [r for r in rules.PAPER_REWARDS if r not in missing]
    assert f"skipped: {', '.join(missing)}" in caplog.text
    assert bench.rewards["clipscore"].variant == "ViT-L-14"  # the paper's CLIP, not the reward's default


def test_explicit_unknown_reward_and_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown rewards \['aesthetic_v9'\]; registered: .*brightness"):
        DrawBench(rewards=["brightness", "aesthetic_v9"])
    with pytest.raises(ConfigError, match="normalize must be one of"):
        DrawBench(rewards="brightness", normalize="nft")
    with pytest.raises(ConfigError, match=r"set the scale with the benchmark's normalize .*\['pickscore'\]"):
        DrawBench(rewards="pickscore", reward_options={"pickscore": {"normalize": True}})
    with pytest.raises(ConfigError, match=r"reward_options for \['clipscore'\], which are not scored"):
        DrawBench(rewards="brightness", reward_options={"clipscore": {"variant": "ViT-L-14"}})


# -- scoring and aggregation ----------------------------------------------------------------------------
def test_a_column_per_reward_normalized_and_one_bad_image_loses_nothing_else(tiny_dir, tmp_path):
    images = [Image.new("RGB", (32, 32), c) for c in ("white", "navy", "olive")]
    samples = [Sample(f"00{i}/0", p, im, metadata={"category": "Colors"})
               for i, (p, im) in enumerate(zip(["a white wall", "a navy boat", "an olive"], images))]
    samples.append(Sample("003/0", "broken", tmp_path / "missing.png", metadata={"category": "Text"}))
    bench = DrawBench(rewards="brightness,pickscore", normalize="flowgrpo",
                      reward_options={"pickscore": {"model": str(tiny_dir / "clip")}})
    recs = bench.score(samples)
    raw = get_reward("pickscore", model=str(tiny_dir / "clip")).score(samples[:3]).scores
    bright = get_reward("brightness").score(samples[:3]).scores
    for rec, p, b in zip(recs, raw, bright):
        assert rec["pickscore"] == pytest.approx(p / 26, rel=1e-6) and rec["brightness"] == b
        assert rec["error"] is None and rec["category"] == "Colors"
    bad = recs[3]
    assert bad["pickscore"] is None and bad["brightness"] is None
    assert "003/0" in bad["pickscore.error"] and bad["error"].startswith("brightness: ")


def test_table_is_the_mean_per_reward_overall_and_per_category():
    bench = DrawBench(rewards="brightness")
    per_sample = pd.DataFrame({
        "category": ["Colors", "Colors", "Text", "Text"],
        "brightness": [0.2, 0.4, 1.0, None],
        "error": [None, None, None, "brightness: sample '003/0': broken"],
    })
    table = bench.aggregate(per_sample)
    assert list(table.index) == ["all", "Colors", "Text"] and list(table.columns) == ["brightness", "images"]
    assert table["brightness"].tolist() == pytest.approx([(0.2 + 0.4 + 1.0) / 3, 0.3, 1.0])
    assert table["images"].tolist() == [4, 2, 2]
    assert bench.summary(table, per_sample) == {
        "brightness": pytest.approx(1.6 / 3), "normalize": "raw", "errors": 1}


def test_run_drawbench_end_to_end_on_tiny_checkpoints(tiny_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    options = (f"reward_options={{pickscore: {{model: '{tiny_dir / 'clip'}'}}, "
               f"clipscore: {{model: '{tiny_dir / 'open-clip-vit-l-14'}'}}}}")
    assert main(["run", "--bench", "drawbench", "--model", str(tiny_dir / "flux"), "--steps", "2",
                 "--height", "32", "--width", "32", "--limit", "2", "--images-per-prompt", "2",
                 "--data-dir", str(data_dir), "--no-leaderboard", "--device", "cpu", "--output-dir", str(run),
                 "--option", "rewards=[brightness, pickscore, clipscore]", "--option", options,
                 "--option", "normalize=flowgrpo",
                 "--option", f"categories={data_dir / 'drawbench' / 'prompts.jsonl'}"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["n_images"] == 4 and res["benchmark"]["normalize"] == "flowgrpo"
    assert set(res["table"]) == {"all", "Text", "Reddit"}  # the first two prompts' categories
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    images = [Sample(r["id"], r["prompt"], run / r["image"]) for r in rows]
    pick = get_reward("pickscore", model=str(tiny_dir / "clip")).score(images).scores
    clip = get_reward("clipscore", model=str(tiny_dir / "open-clip-vit-l-14")).score(images).scores
    assert [r["pickscore"] for r in rows] == pytest.approx([p / 26 for p in pick], rel=1e-5)
    assert [r["clipscore"] for r in rows] == pytest.approx(clip, rel=1e-5)
    for name in ("brightness", "pickscore", "clipscore"):
        assert res["summary"][name] == pytest.approx(sum(r[name] for r in rows) / 4, rel=1e-9)
        assert res["table"]["all"][name] == res["summary"][name]
    assert "| category | brightness | pickscore | clipscore | images |" in (run / "summary.md").read_text()
