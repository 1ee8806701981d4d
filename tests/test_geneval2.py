"""GenEval 2 / Soft-TIFA: rules against hand-worked numbers and scipy, the benchmark on a synthetic file in
the upstream format (always runs), bad input, the real data file, and ``evalsuite run`` end to end on tiny
checkpoints (FLUX + Qwen3-VL)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from evalsuite import ConfigError
from evalsuite.benchmarks import geneval2_rules as rules
from evalsuite.benchmarks.geneval2 import DATA_KEY, GenEval2, read_items
from evalsuite.data import data_file
from evalsuite.images import ImageFailure

# Three prompts in the upstream line format (question shapes and skills as in geneval2_data.jsonl).
ROWS = [
    {"prompt": "two red cats", "atom_count": 3,
     "vqa_list": [["How many cats are in the image?", "two"], ["Are the cats red?", "Yes"],
                  ["Are there any cats in the image?", "Yes"]],
     "skills": ["count", "attribute", "object"]},
    {"prompt": "a dog on a bench", "atom_count": 3,
     "vqa_list": [["How many dogs are in the image?", "one"], ["How many benches are in the image?", "one"],
                  ["Is the dog on the bench?", "Yes"], ["Are there any dogs in the image?", "Yes"],
                  ["Are there any benches in the image?", "Yes"]],
     "skills": ["count", "count", "position", "object", "object"]},
    {"prompt": "a horse eating three apples", "atom_count": 4,
     "vqa_list": [["How many horses are in the image?", "one"],
                  ["How many apples are in the image?", "three"],
                  ["Is the horse eating the apples?", "Yes"], ["Are there any horses in the image?", "Yes"]],
     "skills": ["count", "count", "verb", "object"]},
]
# The probability the fake VQA model gives each first-token spelling, per question (unlisted: 0). Wrong
# answers ("three" for two cats, "No") carry mass that must not count.
TABLE = {
    "How many cats are in the image?": {"two": 0.25, "Two": 0.125, " 2": 0.125, "three": 0.5},  # 0.5
    "Are the cats red?": {"Yes": 0.5, "yes": 0.25, "No": 0.25},  # 0.75
    "Are there any cats in the image?": {" Yes": 1.0},  # 1.0
    "How many dogs are in the image?": {"one": 1.0},  # 1.0
    "How many benches are in the image?": {"1": 0.5, "One": 0.25},  # 0.75
    "Is the dog on the bench?": {"No": 1.0},  # 0.0
    "Are there any dogs in the image?": {"Yes": 1.0},  # 1.0
    "Are there any benches in the image?": {"yes": 0.5},  # 0.5
    "How many horses are in the image?": {" one": 0.5, " One": 0.5},  # 1.0
    "How many apples are in the image?": {"3": 0.25, " 3": 0.25, "three": 0.25},  # 0.75
    "Is the horse eating the apples?": {"Yes": 0.25},  # 0.25
    "Are there any horses in the image?": {"Yes": 1.0},  # 1.0
}
GM = [0.375 ** (1 / 3), 0.0, 0.1875 ** (1 / 4)]  # (0.5*0.75*1)^(1/3); a zero; (1*0.75*0.25*1)^(1/4)
AM = [2.25 / 3, 3.25 / 5, 3.0 / 4]


def fake_soft_vqa(images, questions, spellings):
    """Sums the table over the spellings the benchmark passes: only the official forms count."""
    return [sum(TABLE[q].get(f, 0.0) for f in forms) for q, forms in zip(questions, spellings)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def synthetic(tmp_path) -> Path:
    return write_jsonl(tmp_path / "geneval2_data.jsonl", ROWS)


def scored(bench: GenEval2, images=None) -> pd.DataFrame:
    samples = bench.samples(bench.prompts())
    images = images or [Image.new("RGB", (32, 32))] * len(samples)
    rows = bench.score([s.with_image(im) for s, im in zip(samples, images)])
    return pd.DataFrame([{"id": s.id, **r} for s, r in zip(samples, rows)])


# -- rules ---------------------------------------------------------------------------------------------
def test_answer_forms_official_order():
    assert rules.answer_forms("How many cats are in the image?", "four") == [
        "four", "Four", " four", " Four", "4", " 4"]
    assert rules.answer_forms("How many cats are in the image?", "ten")[4:] == ["10", " 10"]
    assert rules.answer_forms("How many cats are in the image?", "dozen")[4:] == ["other", " other"]
    assert rules.answer_forms("Are the cats red?", "Yes") == ["Yes", "yes", " yes", " Yes"]
    assert rules.answer_forms("how many cats?", "two") == ["Yes", "yes", " yes", " Yes"]  # prefix is exact


def test_means_hand_worked():
    assert rules.arithmetic_mean([0.25, 1.0, 0.0625]) == pytest.approx(1.3125 / 3)
    assert rules.geometric_mean([0.25, 1.0, 0.0625]) == pytest.approx(0.25)  # (2^-6)^(1/3)
    assert rules.geometric_mean([0.9, 0.0, 0.8]) == 0.0  # one zero zeroes the prompt (GM only)
    assert rules.arithmetic_mean([0.9, 0.0, 0.8]) == pytest.approx(1.7 / 3)
    assert rules.benchmark_score([0.25, 0.0]) == pytest.approx(12.5)  # 100 x mean
    for bad in ([], [0.5, -0.1], [float("nan")]):
        with pytest.raises(ValueError):
            rules.geometric_mean(bad)


def test_geometric_mean_matches_scipy():
    import numpy as np
    from scipy.stats import gmean

    rng = np.random.default_rng(0)
    for n in (1, 3, 11):
        x = rng.uniform(1e-6, 1.0, n)
        assert rules.geometric_mean(list(x)) == pytest.approx(float(gmean(x)), rel=1e-12)
    with np.errstate(divide="ignore"):
        assert rules.geometric_mean([0.3, 0.0]) == float(gmean([0.3, 0.0]))


def test_breakdowns_hand_worked():
    skills = rules.skill_scores([0.5, 1.0, 0.25, 0.0, 0.75], ["count", "object", "count", "verb", "novel"])
    assert list(skills) == ["object", "count", "verb", "novel"]  # SKILLS order, then others
    assert skills["count"] == (pytest.approx(37.5), 2) and skills["verb"] == (0.0, 1)
    atoms = rules.atomicity_scores([0.5, 0.0, 0.25], [4, 3, 3])
    assert list(atoms) == [3, 4] and atoms[3] == (pytest.approx(12.5), 2) and atoms[4] == (50.0, 1)


def test_parse_item_errors_name_the_line():
    good = ROWS[0]
    assert rules.parse_item(good, "f:1").questions[0] == ("How many cats are in the image?", "two")
    cases = [
        ({**good, "skills": ["count"]}, "as long as vqa_list"),
        ({k: v for k, v in good.items() if k != "atom_count"}, "missing field"),
        ({**good, "vqa_list": [["Is it red?", "No"], *good["vqa_list"][1:]]}, "probability of 'Yes'"),
        ({**good, "vqa_list": [["just one"], *good["vqa_list"][1:]]}, "vqa_list\\[0\\]"),
        ({**good, "atom_count": "3"}, "atom_count"),
    ]
    for row, message in cases:
        with pytest.raises(ValueError, match=f"f:7: .*{message}"):
            rules.parse_item(row, "f:7")


# -- benchmark on the synthetic file -------------------------------------------------------------------
def test_synthetic_file_hand_worked(synthetic):
    bench = GenEval2(vqa=fake_soft_vqa, data_file=synthetic)
    records = bench.prompts()
    assert [r.id for r in records] == ["000", "001", "002"] and records[2].metadata["atom_count"] == 4
    ps = scored(bench)
    assert ps["error"].isna().all()
    assert ps["question_scores"][0] == pytest.approx([0.5, 0.75, 1.0])
    assert ps["question_scores"][1] == pytest.approx([1.0, 0.75, 0.0, 1.0, 0.5])
    assert list(ps["soft_tifa_gm"]) == pytest.approx(GM) and list(ps["soft_tifa_am"]) == pytest.approx(AM)
    assert list(ps["score"]) == list(ps["soft_tifa_gm"])  # the headline is GM

    table = bench.aggregate(ps)
    assert table.loc["GenEval2 (Soft-TIFA GM)", "score"] == pytest.approx(100 * sum(GM) / 3)
    assert table.loc["GenEval2 (Soft-TIFA AM)", "score"] == pytest.approx(100 * 2.15 / 3)
    want_skills = {"object": (87.5, 4), "count": (80.0, 5), "attribute": (75.0, 1), "position": (0.0, 1),
                   "verb": (25.0, 1)}
    for skill, (v, n) in want_skills.items():
        assert table.loc[f"skill/{skill}", "score"] == pytest.approx(v)
        assert table.loc[f"skill/{skill}", "n"] == n
    assert table.loc["atoms/3", "score"] == pytest.approx(100 * GM[0] / 2)
    assert table.loc["atoms/4", "score"] == pytest.approx(100 * GM[2])
    head = bench.summary(table, ps)
    assert head["geneval2"] == pytest.approx(100 * sum(GM) / 3) and head["n_prompts"] == 3
    assert head["skill/count"] == pytest.approx(80.0) and head["vqa"].startswith("callable:")


def test_describe_names_protocol_license_and_backend(synthetic, tiny_dir):
    desc = GenEval2(vqa_model=tiny_dir / "qwen3-vl", data_file=synthetic).describe()
    assert desc["vqa"] == "qwen3-vl" and desc["vqa_model"] == str(tiny_dir / "qwen3-vl")
    assert desc["protocol"]["num_inference_steps"] == 40 and desc["protocol"]["guidance_scale"] == 1.0
    assert (desc["protocol"]["height"], desc["protocol"]["width"]) == (512, 512)
    assert "sha256" in desc["protocol"]["seed"] and "stable-diffusion-3.5-medium" in desc["protocol"]["model"]
    assert "CC BY-NC" in GenEval2(vqa=fake_soft_vqa).describe()["data"]
    assert "NON-COMMERCIAL" in data_file(DATA_KEY).license


def test_bad_samples_do_not_break_the_batch(synthetic):
    calls = []

    def picky(images, questions, spellings):
        calls.append(len(questions))
        if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
            raise RuntimeError("cannot read red images")
        return fake_soft_vqa(images, questions, spellings)

    bench = GenEval2(vqa=picky, data_file=synthetic)
    samples = bench.samples(bench.prompts())
    broken = samples[1].with_image(Image.new("RGB", (8, 8)))
    broken = type(broken)(**{**broken.__dict__, "metadata": {**broken.metadata, "skills": ["count"]}})
    batch = [samples[0].with_image(Image.new("RGB", (8, 8), (255, 0, 0))), broken,
             samples[2].with_image(ImageFailure("sample '002/0': image file x.png is truncated"))]
    batch.append(samples[2].with_image(Image.new("RGB", (8, 8))))
    rows = bench.score(batch)
    assert "000/0" in rows[0]["error"] and "cannot read red images" in rows[0]["error"]
    assert "001/0" in rows[1]["error"] and "as long as vqa_list" in rows[1]["error"]
    assert "truncated" in rows[2]["error"]
    assert rows[3]["error"] is None and rows[3]["score"] == pytest.approx(GM[2])
    assert calls[0] == 3 + 4  # one call for the whole batch first, then one per sample
    ps = pd.DataFrame(rows)
    assert bench.summary(bench.aggregate(ps), ps)["n_failed"] == 3


def test_bad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.jsonl:2: not JSON"):
        read_items(path)
    with pytest.raises(ConfigError, match="not a file"):
        GenEval2(vqa=fake_soft_vqa, data_file=tmp_path / "missing.jsonl")


# -- the real file --------------------------------------------------------------------------------------
def test_upstream_file_verified_and_read(data_dir):
    bench = GenEval2(vqa=fake_soft_vqa, data_dir=data_dir)
    records = bench.prompts()
    assert len(records) == 800 and len({r.prompt for r in records}) == 800
    assert records[0].prompt == "a green backpack and a pig" and records[799].metadata["atom_count"] == 10
    assert sum(len(r.metadata["vqa_list"]) for r in records) == 6012
    answers = {a for r in records for q, a in r.metadata["vqa_list"] if rules.is_count_question(q)}
    assert answers == {"one", "two", "three", "four", "five", "six", "seven"}


# -- end to end -----------------------------------------------------------------------------------------
def test_end_to_end_synthetic_tiny_flux_and_qwen3(tiny_dir, synthetic, tmp_path):
    from evalsuite.cli import main

    run = tmp_path / "run"
    assert main(["run", "--bench", "geneval2", "--model", str(tiny_dir / "flux"), "--steps", "2",
                 "--height", "32", "--width", "32", "--limit", "2", "--no-leaderboard", "--device", "cpu",
                 "--output-dir", str(run), "--option", f"vqa_model={tiny_dir / 'qwen3-vl'}",
                 "--option", f"data_file={synthetic}"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["benchmark"]["vqa"] == "qwen3-vl" and res["n_images"] == 2
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [len(r["question_scores"]) for r in rows] == [3, 5]
    assert all(0.0 < p < 1.0 for r in rows for p in r["question_scores"])
    # the rule on the scorer's numbers, and the same numbers from the scorer on the saved images
    from evalsuite.rewards.soft_vqa import QwenSoftVQA

    vqa = QwenSoftVQA(tiny_dir / "qwen3-vl")
    for r, row in zip(rows, ROWS):
        assert r["soft_tifa_gm"] == pytest.approx(rules.geometric_mean(r["question_scores"]))
        image = Image.open(run / r["image"]).convert("RGB")
        qs = [q for q, _ in row["vqa_list"]]
        forms = [rules.answer_forms(q, a) for q, a in row["vqa_list"]]
        want = vqa.probabilities([image] * len(qs), qs, forms)
        assert r["question_scores"] == pytest.approx(want, rel=1e-4)
    headline = 100 * (rows[0]["soft_tifa_gm"] + rows[1]["soft_tifa_gm"]) / 2
    assert res["summary"]["geneval2"] == pytest.approx(headline)


def test_cli_run_upstream_data(tiny_dir, data_dir, tmp_path):
    from evalsuite.cli import main

    run = tmp_path / "run"
    assert main(["run", "--bench", "geneval2", "--model", str(tiny_dir / "flux"), "--steps", "2",
                 "--height", "32", "--width", "32", "--limit", "2", "--no-leaderboard", "--device", "cpu",
                 "--data-dir", str(data_dir), "--output-dir", str(run),
                 "--option", f"vqa_model={tiny_dir / 'qwen3-vl'}"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["n_images"] == 2 and res["summary"]["n_failed"] == 0
    table = res["table"]
    assert table["GenEval2 (Soft-TIFA GM)"]["score"] == pytest.approx(res["summary"]["geneval2"])
    assert table["GenEval2 (Soft-TIFA GM)"]["n"] == 2 and "skill/count" in table and "atoms/3" in table
