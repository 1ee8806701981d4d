"""TIIF-Bench: rules against hand-worked cases from upstream ``eval/``, the aggregation against upstream's own
judge outputs (``derived/``), the benchmark on synthetic files in the upstream format (the real files are not
redistributable), the API judge against a fake OpenAI-compatible server, and ``evalsuite run`` end to end."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from evalsuite import ConfigError
from evalsuite.benchmarks import tiif_rules as rules
from evalsuite.benchmarks.tiif_bench import TIIFBench, file_paths
from evalsuite.data_files import BY_KEY
from evalsuite.images import ImageFailure
from tests.test_judges import FakeChatServer, completion
from tests.test_unigenbench import run_tiny

# Synthetic records in the upstream format: {dim: [(prompt record, eval record), ...]}.
DATA = {
    "shape+color": [
        (
            {"short_description": "a red cube", "long_description": "a shiny red cube on a table"},
            {"yn_question_list": ["Is there a cube? ", "Is the cube red?"], "yn_answer_list": ["yes", "yes"]},
        ),
        (
            {"short_description": "a blue ball", "long_description": "a matte blue ball in the grass"},
            {
                "yn_question_list": ["Is there a ball?", "Is the ball blue?", "Is there no dog?"],
                "yn_answer_list": ["yes", "yes", "no"],
            },
        ),
    ],
    "text": [
        (
            {
                "short_description": "a sign that says 'open'",
                "long_description": "a shop sign that reads 'open'",
            },
            {"yn_question_list": ["Is the text 'open' in the image?"], "yn_answer_list": ["Yes"]},
        ),
    ],
    "real_world": [
        (
            {"short_description": "a poster", "long_description": "a poster"},
            {
                "yn_question_list": [
                    "Is there a poster? Answer with yes or no.",
                    "Is it blue? Answer with yes or no.",
                ],
                "yn_answer_list": ["yes", "no"],
                "corrspond_idx": 0,
            },
        ),
    ],
}
# The fake judge's answers by question (stripped): correct except "Is the ball blue?" and "Is it blue?".
ANSWERS = {
    "Is there a cube?": "yes",
    "Is the cube red?": "Yes",
    "Is there a ball?": "yes",
    "Is the ball blue?": "no",
    "Is there no dog?": "No",
    "Is the text 'open' in the image?": "yes",
    "Is there a poster? Answer with yes or no.": "yes",
    "Is it blue? Answer with yes or no.": "yes",
}
# shape+color 4/5 = 0.8, text 1/1, real_world 1/2: groups Attribute 0.8, Text 1.0, Complex 0.5.
WANT = {"shape+color": 0.8, "text": 1.0, "real_world": 0.5}


def write_data(root: Path, split: str = "testmini", data=DATA) -> Path:
    for dim, pairs in data.items():
        prompt_rel, eval_rel = file_paths(split, dim)
        for rel, k in ((prompt_rel, 0), (eval_rel, 1)):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"type": dim, **pair[k]}) + "\n" for pair in pairs), "utf-8")
    return root


def questions_of(text: str) -> list[str]:
    block = text.split("Questions:\n", 1)[1].split("\n\n", 1)[0]
    return block.split("\n")


def fake_judge(image, text):
    return "\n".join(f"{ANSWERS[q]}, because I looked." for q in questions_of(text))


@pytest.fixture
def root(tmp_path) -> Path:
    return write_data(tmp_path / "tiif")


def scored(bench):
    samples = bench.samples(bench.prompts())
    rows = bench.score([s.with_image(Image.new("RGB", (16, 16))) for s in samples])
    return pd.DataFrame([{"id": s.id, **r} for s, r in zip(samples, rows)])


# -- rules ---------------------------------------------------------------------------------------------
def test_parse_reply_hand_worked():
    text = "\n  Yes, there is a cube.\n\n1. no\nAnswer: yes\nNO - it is green\nyesterday it was\nno\n"
    assert rules.parse_reply(text, 3) == ["yes", "no", "no"]  # numbered / prefixed / "yesterday" ignored
    with pytest.raises(ValueError, match="3 yes/no lines for 2 questions"):
        rules.parse_reply(text, 2)
    with pytest.raises(ValueError, match="0 yes/no lines"):
        rules.parse_reply("", 1)
    assert rules.is_correct("Yes ", "yes") and not rules.is_correct("no", "yes")
    assert rules.count_correct(["yes", "No", "Yes"], ["yes", "no", "no"]) == 2


def test_instruction_and_templates():
    for t in rules.TEMPLATES:
        assert t.startswith("\n") and t.endswith("\n") and t.count(rules.PLACEHOLDER) == 1
    assert "only one question" in rules.TEMPLATES[1]
    text = rules.format_instruction(rules.TEMPLATES[0], [" Is there a cat? ", "Is it red?\t"])
    assert "Questions:\nIs there a cat?\nIs it red?\n\n" in text
    picks = [rules.choose_template(3, seed) for seed in range(60)]
    assert set(picks) == {0, 1, 2} and picks == [rules.choose_template(3, seed) for seed in range(60)]
    with pytest.raises(ValueError):
        rules.check_templates(["no placeholder"])


def test_groups_levels_overall_hand_worked():
    assert len(rules.GROUPS) == 9 and len(rules.DIMENSIONS) == len(set(rules.DIMENSIONS)) == 39
    acc = {d: 0.5 for d in rules.DIMENSIONS}
    acc.update({"text": 1.0, "style": 0.0, "real_world": 0.25, "shape+color": 0.9})
    groups = rules.group_scores(acc)
    assert groups["Attribute"] == pytest.approx((0.9 + 1.5) / 4) and groups["Text Generation"] == 1.0
    levels = rules.level_scores(acc)
    assert levels["Advanced"] == pytest.approx((24 * 0.5 + 1.0) / 26)  # over its 26 dimensions, not 5 groups
    assert levels["Basic"] == pytest.approx((11 * 0.5 + 0.9) / 12) and levels["Real world"] == 0.25
    want = (0.6 + 0.5 + 0.5 + 0.5 + 0.5 + 0.5 + 1.0 + 0.0 + 0.25) / 9
    assert rules.overall(acc) == pytest.approx(want)
    partial = {"shape+color": 0.8, "text": 1.0, "real_world": 0.5}  # missing dimensions and groups skipped
    assert rules.overall(partial) == pytest.approx((0.8 + 1.0 + 0.5) / 3)
    assert rules.dimension_accuracy([(2, 3), (1, 3)]) == 0.5
    assert rules.dimension_accuracy([(2, 3)]) == 0.6667 and rules.dimension_accuracy([(2, 3)], None) == 2 / 3
    assert rules.dimension_accuracy([]) is None


# -- aggregation against upstream's own judge outputs ----------------------------------------------------
@pytest.mark.parametrize(
    ("judge", "model", "short", "long"),
    [
        ("GPT-4o", "sd35", 71.66, 67.42),
        ("GPT-4o", "sd3", 67.65, 66.22),
        ("GPT-4o", "sd_xl", 55.14, 42.30),
        ("GPT-4o", "GPT-4o", 89.32, 88.46),
        ("QwenVL", "sd35", 68.69, 64.92),
        ("QwenVL", "sd3", 64.79, 64.79),
    ],
)
def test_aggregation_reproduces_upstream_counts(data_dir, judge, model, short, long):
    path = data_dir / "tiif_bench" / "derived" / "upstream_testmini_judge_counts.csv"
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["judge"] == judge and r["model"] == model]
    for length, want in (("short", short), ("long", long)):
        bench = TIIFBench(length=length, judge=fake_judge)
        per_sample = pd.DataFrame(
            [  # one row per dimension carrying its summed counts (a micro-average)
                {
                    "score": 0.0,
                    "dimension": r["dimension"],
                    "n_correct": int(r["n_correct"]),
                    "n_questions": int(r["n_questions"]),
                }
                for r in rows
                if r["length"] == length
            ]
        )
        assert len(per_sample) == 39
        assert round(bench.aggregate(per_sample).loc["Overall", "score"], 2) == pytest.approx(want, abs=1e-9)


# -- benchmark on synthetic files ---------------------------------------------------------------------
def test_synthetic_files_hand_worked(root):
    bench = TIIFBench(judge=fake_judge, data_root=root, length="long")
    records = bench.prompts()
    assert [r.id for r in records] == ["shape+color/0", "shape+color/1", "text/0", "real_world/0"]
    assert records[0].prompt == "a shiny red cube on a table" and records[0].metadata["answers"] == [
        "yes",
        "yes",
    ]
    ps = scored(bench)
    assert ps["error"].isna().all() and list(ps["n_correct"]) == [2, 2, 1, 1]
    table = bench.aggregate(ps)
    for dim, acc in WANT.items():
        assert table.loc[f"dim/{dim}", "score"] == pytest.approx(100 * acc)
    assert table.loc["dim/shape+color", "n"] == 5
    assert table.loc["group/Attribute", "score"] == pytest.approx(80.0)
    assert table.loc["level/Advanced", "score"] == pytest.approx(100.0)
    assert table.loc["Overall", "score"] == pytest.approx(100 * (0.8 + 1.0 + 0.5) / 3)
    head = bench.summary(table, ps)
    assert head["tiif_overall_long"] == pytest.approx(100 * 2.3 / 3) and head["n_images"] == 4
    sample = bench.samples(records)[1]
    assert bench.image_path(sample) == "shape+color/evalsuite/long_description/1.png"
    assert TIIFBench(judge=fake_judge, data_root=root).prompts()[0].prompt == "a red cube"  # short


def test_bad_samples_and_files(root, tmp_path):
    def judge(image, text):
        if image.getpixel((0, 0)) == (255, 0, 0):
            raise RuntimeError("judge down")
        if image.getpixel((0, 0)) == (0, 255, 0):
            return "yes"  # one line for several questions
        return fake_judge(image, text)

    bench = TIIFBench(judge=judge, data_root=root)
    s = bench.samples(bench.prompts())
    rows = bench.score(
        [
            s[0].with_image(Image.new("RGB", (8, 8), (255, 0, 0))),
            s[1].with_image(Image.new("RGB", (8, 8), (0, 255, 0))),
            s[2].with_image(ImageFailure("sample 'text/0/0': image file 0.png is missing")),
            s[3].with_image(Image.new("RGB", (8, 8))),
        ]
    )
    assert "'shape+color/0/0'" in rows[0]["error"] and "judge down" in rows[0]["error"]
    assert "'shape+color/1/0'" in rows[1]["error"] and "1 yes/no lines for 3 questions" in rows[1]["error"]
    assert "missing" in rows[2]["error"]
    assert rows[3]["error"] is None and rows[3]["score"] == 0.5
    ps = pd.DataFrame(rows)
    head = bench.summary(bench.aggregate(ps), ps)
    assert head["n_failed"] == 3 and head["tiif_overall_short"] == pytest.approx(50.0)  # only real_world left
    bad = write_data(
        tmp_path / "bad",
        data={"text": [(DATA["text"][0][0], {"yn_question_list": ["q"], "yn_answer_list": []})]},
    )
    with pytest.raises(ConfigError, match="text_prompts.jsonl line 1 .*equally long"):
        TIIFBench(judge=fake_judge, data_root=bad).prompts()
    with pytest.raises(ConfigError, match="split"):
        TIIFBench(split="mini", judge=fake_judge)
    with pytest.raises(ConfigError, match="no data/ folder"):
        TIIFBench(judge=fake_judge, data_root=tmp_path)


def test_pinned_files_cover_both_splits():
    keys = [k for k in BY_KEY if k.startswith("tiif_bench/")]
    assert len(keys) == 4 * 39 and set(TIIFBench.data_files) == set(keys)
    spec = BY_KEY["tiif_bench/data/testmini_prompts/color+2d_prompts.jsonl"]
    assert "/A113N-W3I/TIIF-Bench/3aae7504d2546516eaec2fea82fde9ae445dfea3/data/" in spec.url
    assert spec.license == "none stated (not redistributable)" and len(spec.sha256) == 64


# -- the API judge against a fake OpenAI-compatible server ----------------------------------------------
def answer_questions(body: dict):
    text = next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
    return completion("\n".join(f"{ANSWERS[q]} - reason" for q in questions_of(text)))


@pytest.fixture
def server():
    s = FakeChatServer(fallback=answer_questions)
    yield s
    s.close()


def test_api_judge_request_and_retry(server, root):
    server.script = [completion("yes")]  # wrong number of answers: retried with a fresh request
    bench = TIIFBench(judge=server.url, judge_options={"backoff": 0.0}, data_root=root)
    sample = bench.samples(bench.prompts())[1].with_image(Image.new("RGB", (8, 8)))
    (row,) = bench.score([sample])
    assert row["error"] is None and row["attempts"] == 2 and row["preds"] == ["yes", "no", "no"]
    _, body = server.requests[0]
    assert body["model"] == "gpt-4o" and body["temperature"] == 1.0 and "max_tokens" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are a professional image critic."}
    assert [p["type"] for p in user["content"]] == ["text", "image_url"]
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][0]["text"] == rules.format_instruction(
        rules.TEMPLATES[row["template"]], DATA["shape+color"][1][1]["yn_question_list"]
    )


def test_end_to_end_tiny_flux_and_api_judge(tiny_dir, server, root, tmp_path):
    run = tmp_path / "run"
    run_tiny("tiif_bench", tiny_dir, run, 3, "--option", f"data_root={root}", "--option", "length=long",
             "--option", f"judge={server.url}")
    res = json.loads((run / "results.json").read_text())
    assert res["n_images"] == 3 and res["summary"]["n_failed"] == 0
    assert (run / "text/evalsuite/long_description/0.png").is_file()
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["n_correct"] for r in rows] == [2, 2, 1]
    assert [sum(r["hits"]) for r in rows] == [2, 2, 1]  # per-question verdicts, shown by the report
    assert res["summary"]["tiif_overall_long"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    assert res["benchmark"]["judge"]["model"] == "gpt-4o"
    assert re.search(r"ours", json.dumps(res["benchmark"]["templates"]))
