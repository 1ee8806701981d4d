"""UniGenBench: rules against hand-worked cases from upstream ``eval_common.py``, the row-509 repair, the
benchmark on a synthetic CSV (always runs) and on the upstream files, the API judge against a fake
OpenAI-compatible server, and ``evalsuite run`` end to end on tiny checkpoints."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from evalsuite import ConfigError
from evalsuite.benchmarks import unigenbench_rules as rules
from evalsuite.benchmarks.unigenbench import UniGenBench, read_rows
from evalsuite.images import ImageFailure
from tests.test_judges import FakeChatServer, completion

ROW_509 = (
    '{"Primary Categories": "Design", "Testpoints": ["Action - Full-body (Character/Anthropomorphic)", '
    '"Grammar - Negation" "Attribute - Color"], "Testpoint Description": ["painting", "no newspaper", '
    '"deep sea blue"]}'
)


def sub_dims(points, descs=None) -> str:
    return json.dumps(
        {
            "Primary Categories": "Art",
            "Testpoints": points,
            "Testpoint Description": descs or [f"span {i}" for i in range(len(points))],
        }
    )


ROWS = [  # index, prompt, checkpoints (the third row carries the upstream row-509 defect)
    (0, "a red fox in ink wash style", sub_dims(["Style", "Attribute - Color"])),
    (
        1,
        "two cats, neither of them black",
        sub_dims(["Attribute - Quantity", "Grammar - Negation", "Attribute - Color"]),
    ),
    (2, "a man painting a wall", ROW_509),
]
# What the fake judge scores, per prompt index (one list per image; every image of a prompt alike).
SCORES = {0: [1, 0], 1: [1, 1, 0], 2: [0, 1, 1]}


def write_csv(path: Path, rows=ROWS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "prompt_en", "sub_dims_en"])
        w.writerows(rows)
    return path


def reply(scores, analysis=None) -> str:
    analysis = analysis if analysis is not None else [f"look {i}" for i in range(len(scores))]
    return (
        f"<description><prompt>p</prompt><checkpoint>[]</checkpoint><analysis>{analysis!r}</analysis>"
        f"<score>{scores!r}</score></description>"
    )


def fake_judge(image, text):
    prompt = re.search(r"<prompt>(.*?)</prompt>", text).group(1)
    index = next(i for i, p, _ in ROWS if p == prompt)
    return reply(SCORES[index])


@pytest.fixture
def synthetic(tmp_path) -> Path:
    return write_csv(tmp_path / "test_prompts_en_long.csv")


def scored(bench, judge_images=None):
    samples = bench.samples(bench.prompts())
    images = judge_images or [Image.new("RGB", (16, 16))] * len(samples)
    rows = bench.score([s.with_image(im) for s, im in zip(samples, images)])
    return pd.DataFrame([{"id": s.id, **r} for s, r in zip(samples, rows)])


# -- rules ---------------------------------------------------------------------------------------------
def test_dimension_keys_as_upstream():
    assert rules.primary_dimension("Attribute - Color") == "Attribute "  # the trailing space is upstream's
    assert rules.primary_dimension("Action - Hand (Character/Anthropomorphic)") == "Action "
    assert rules.primary_dimension("Style") == "Style"
    assert rules.primary_dimension("动作-人物/拟人全身动作") == "动作"
    assert rules.primary_dimension("Entity Layout - Two-Dimensional Space") == "Entity Layout "


def test_parse_reply_hand_worked():
    assert rules.parse_reply(reply([1, 0]), 2) == (["look 0", "look 1"], [1, 0])
    text = "noise <analysis>\n['a',\n 'b']\n</analysis> x <score> [0, 1] </score> <score>[1]</score>"
    assert rules.parse_reply(text, 2) == (["a", "b"], [0, 1])  # the first of each tag, DOTALL, stripped
    for bad, message in [
        ("<score>[1]</score>", "tags not found"),
        (reply([1, 0]), "length mismatch"),
        ("<analysis>['a']</analysis><score>[yes]</score>", "cannot read"),
        ("<analysis>5</analysis><score>[1]</score>", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=message):
            rules.parse_reply(bad, 1 if "yes" in bad or "5" in bad else 3)


def test_correctness_and_roundtrip_quirk():
    assert rules.is_correct(1) and rules.is_correct(1.0)
    assert not rules.is_correct("1") and not rules.is_correct(0.5) and not rules.is_correct(0)
    assert rules.survives_official_roundtrip("p", ["Style"], ["fine"], [1])
    assert rules.survives_official_roundtrip("p", ["Style"], ['say "hi"\n'], [1])  # escapes read back
    assert not rules.survives_official_roundtrip(
        "p", ["Style"], ["x"], [True]
    )  # json true: literal_eval fails
    assert not rules.survives_official_roundtrip("p", ["Style"], [None], [1])


def test_tally_hand_worked():
    tally = rules.Tally.of(
        [
            (["Style", "Attribute - Color"], [1, 0]),
            (["Attribute - Quantity", "Grammar - Negation", "Attribute - Color"], [1, 1.0, 0]),
            (["Attribute - Color", "Style"], ["1", 1]),
        ]
    )
    assert list(tally.primary) == ["Style", "Attribute ", "Grammar "]  # first-seen order
    assert tally.primary == {"Style": [2, 2], "Attribute ": [1, 4], "Grammar ": [1, 1]}
    assert list(tally.sub) == sorted(tally.sub) and tally.sub["Attribute - Color"] == [0, 3]
    out = rules.official_json(rules.Tally.of([(["Style", "Style", "Style"], [1, 1, 0])]))
    assert out["primary_dimensions"]["Style"] == {"correct": 2, "total": 3, "accuracy": 0.6667}
    assert rules.overall(tally) == pytest.approx((1.0 + 0.25 + 1.0) / 3)


def test_instruction_is_built_as_upstream():
    text = rules.build_instruction("a fox", ["Style", "Attribute - Color"], ["ink wash", "red"], "en")
    assert "The prompt for the generated image is: 「a fox」" in text
    assert "specified in ['Style', 'Attribute - Color']. Detailed" in text  # the Python list repr
    assert (
        "Checkpoints Defination:「\nStyle: Art, painting, photography, design styles, and corresponding "
        "artist names\nAttribute - Color: Assessment of different colors\n」"
    ) in text
    assert "Checkpoints Description:「\nStyle: ink wash\nAttribute - Color: red\n」" in text
    assert "<checkpoint>['Style', 'Attribute - Color']</checkpoint>" in text
    zh = rules.build_instruction("一只狐狸", ["风格"], ["水墨"], "zh")
    assert (
        "提示词为「一只狐狸」" in zh
        and "考点说明:「\n风格: 艺术、绘画" in zh
        and "考点描述说明:「\n风格: 水墨\n」" in zh
    )


def test_row_509_repair():
    points, descs, repair = rules.parse_sub_dims(ROW_509, "en", "f.csv index 509")
    assert points == (
        "Action - Full-body (Character/Anthropomorphic)",
        "Grammar - Negation",
        "Attribute - Color",
    )
    assert len(descs) == 3 and "f.csv index 509" in repair and "inserted 1 missing comma" in repair
    assert '"Grammar - Negation" "Attribute - Color"' in repair
    assert rules.parse_sub_dims(sub_dims(["Style"]), "en", "w")[2] is None  # valid JSON: no repair
    for bad, message in [
        ('{"Testpoints": ["Style"', "not JSON"),
        (sub_dims(["Style"], ["a", "b"]), "as long as"),
        (sub_dims(["Style - Fake"]), "no definition"),
    ]:
        with pytest.raises(ValueError, match=f"w: .*{message}"):
            rules.parse_sub_dims(bad, "en", "w")


# -- benchmark on a synthetic file ------------------------------------------------------------------------
def test_synthetic_file_hand_worked(synthetic):
    bench = UniGenBench(length="long", judge=fake_judge, csv_file=synthetic)
    records = bench.prompts()
    assert [r.id for r in records] == ["0", "1", "2"] and "repair" in records[2].metadata
    assert bench.describe()["repairs"] == [records[2].metadata["repair"]]
    ps = scored(bench)
    assert len(ps) == 12 and ps["error"].isna().all()
    assert list(ps["score"][::4]) == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    table = bench.aggregate(ps)
    # 4 images each; Style 4/4; Attribute: Color 0+0+4 of 12, Quantity 4/4 -> 8/16; Grammar 4/4 + 4/4;
    # Action 0/4.
    assert table.loc["primary/Style", "score"] == 100.0 and table.loc["primary/Attribute", "n"] == 16
    assert table.loc["primary/Attribute", "score"] == pytest.approx(50.0)
    assert table.loc["primary/Grammar", "score"] == 100.0 and table.loc["primary/Action", "score"] == 0.0
    assert table.loc["sub/Attribute - Color", "score"] == pytest.approx(100 * 4 / 12)
    head = bench.summary(table, ps)
    assert head["unigenbench_overall"] == pytest.approx(100 * (1 + 0.5 + 1 + 0) / 4)
    assert head["n_images"] == 12 and head["n_left_out"] == 0 and "not verified" in head["overall_note"]
    assert bench.image_path(bench.samples(records)[5]) == "1_1.png"  # upstream {index}_{j}.png


def test_bad_samples_do_not_break_the_batch(synthetic):
    def judge(image, text):
        if image.getpixel((0, 0)) == (255, 0, 0):
            raise RuntimeError("judge down")
        if image.getpixel((0, 0)) == (0, 255, 0):
            return "I like it"
        if image.getpixel((0, 0)) == (0, 0, 255):
            return reply([True, 1], ["a", "b"])
        return fake_judge(image, text)

    bench = UniGenBench(judge=judge, csv_file=synthetic)
    s = bench.samples(bench.prompts())
    images = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0))]
    batch = [
        s[0].with_image(images[0]),
        s[1].with_image(images[1]),
        s[2].with_image(images[2]),
        s[3].with_image(ImageFailure("sample '0/3': image file 0_3.png is truncated")),
        s[4].with_image(images[3]),
    ]
    rows = bench.score(batch)
    assert "'0/0'" in rows[0]["error"] and "judge down" in rows[0]["error"]
    assert "'0/1'" in rows[1]["error"] and "tags not found" in rows[1]["error"]
    assert rows[2]["error"] is None and rows[2]["score"] is None and "skips" in rows[2]["left_out"]
    assert "truncated" in rows[3]["error"]
    assert rows[4]["error"] is None and rows[4]["score"] == pytest.approx(2 / 3)
    ps = pd.DataFrame(rows)
    head = bench.summary(bench.aggregate(ps), ps)
    assert head["n_images"] == 1 and head["n_failed"] == 3 and head["n_left_out"] == 1


def test_config_errors(tmp_path, synthetic):
    with pytest.raises(ConfigError, match="language"):
        UniGenBench(language="fr", judge=fake_judge)
    with pytest.raises(ConfigError, match="not a file"):
        UniGenBench(judge=fake_judge, csv_file=tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="missing column"):
        read_rows(synthetic, "zh")
    bad = write_csv(tmp_path / "bad.csv", [(0, "p", '{"Testpoints": [')])
    with pytest.raises(ConfigError, match=r"bad.csv index 0: .*not JSON .*\(file "):
        read_rows(bad, "en")


# -- the upstream files ------------------------------------------------------------------------------------
def test_upstream_files_read_and_repaired(data_dir):
    totals = {}
    for lang in ("en", "zh"):
        for length in ("short", "long"):
            bench = UniGenBench(language=lang, length=length, judge=fake_judge, data_dir=data_dir)
            records = bench.prompts()
            assert [r.metadata["index"] for r in records] == list(range(600))
            totals[lang, length] = sum(len(r.metadata["testpoints"]) for r in records)
            assert bench.describe()["repairs"] == [
                r.metadata["repair"] for r in records if "repair" in r.metadata
            ]
    assert totals == {
        ("en", "short"): 1813,
        ("zh", "short"): 1813,
        ("en", "long"): 3920,
        ("zh", "long"): 3920,
    }
    en_long = UniGenBench(length="long", judge=fake_judge, data_dir=data_dir)
    records = en_long.prompts()
    (repair,) = en_long.describe()["repairs"]
    assert repair.startswith("test_prompts_en_long.csv index 509:") and "/" not in repair.split(":")[0]
    assert len(records[509].metadata["testpoints"]) == 5 and records[509].metadata["testpoints"][1:3] == [
        "Grammar - Negation",
        "Attribute - Color",
    ]
    en = UniGenBench(judge=fake_judge, data_dir=data_dir).prompts()
    primary = rules.Tally.of(
        (r.metadata["testpoints"], [1] * len(r.metadata["testpoints"])) for r in en
    ).primary
    assert {k.strip(): t for k, (_, t) in primary.items()} == {
        "Action": 263,
        "Style": 250,
        "Attribute": 234,
        "Relationship": 197,
        "Compound": 194,
        "Grammar": 187,
        "World Knowledge": 158,
        "Entity Layout": 134,
        "Logical Reasoning": 109,
        "Text Generation": 87,
    }


# -- the API judge against a fake OpenAI-compatible server ----------------------------------------------
def answer_checkpoints(body: dict):
    """A well-formed reply: 1 for even checkpoint positions, 0 for odd ones."""
    text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
    points = ast.literal_eval(re.search(r"<checkpoint>(.*?)</checkpoint>", text).group(1))
    return completion(reply([1 - i % 2 for i in range(len(points))]))


def run_tiny(bench: str, tiny_dir: Path, run: Path, limit: int, *extra: str) -> None:
    """``evalsuite run`` of ``bench`` on the tiny FLUX (2 steps, 32 px), offline, into ``run``."""
    from evalsuite.cli import main

    assert main(["run", "--bench", bench, "--model", str(tiny_dir / "flux"), "--steps", "2", "--height", "32",
                 "--width", "32", "--limit", str(limit), "--no-leaderboard", "--device", "cpu",
                 "--output-dir", str(run), *extra]) == 0


@pytest.fixture
def server():
    s = FakeChatServer(fallback=answer_checkpoints)
    yield s
    s.close()


def test_api_judge_request_and_retry(server, synthetic):
    server.script = [completion("no tags here")]  # the first reply is unusable: retried
    bench = UniGenBench(judge=server.url, judge_options={"backoff": 0.0}, csv_file=synthetic)
    sample = bench.samples(bench.prompts())[4].with_image(Image.new("RGB", (8, 8)))
    (row,) = bench.score([sample])
    assert row["error"] is None and row["attempts"] == 2 and row["scores"] == [1, 0, 1]
    _, body = server.requests[0]
    assert body["model"] == "gemini-2.5-pro" and body["max_tokens"] == 4096 and "temperature" not in body
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"] and len(body["messages"]) == 1
    assert parts[0]["text"] == rules.build_instruction(
        ROWS[1][1],
        ["Attribute - Quantity", "Grammar - Negation", "Attribute - Color"],
        ["span 0", "span 1", "span 2"],
        "en",
    )


def test_end_to_end_tiny_flux_and_api_judge(tiny_dir, data_dir, server, tmp_path):
    run = tmp_path / "run"
    run_tiny("unigenbench", tiny_dir, run, 2, "--data-dir", str(data_dir), "--option", "length=long",
             "--option", f"judge={server.url}")
    res = json.loads((run / "results.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert res["n_images"] == 8 and res["summary"]["n_failed"] == 0
    assert "index 509" in json.dumps(manifest) and "inserted 1 missing comma" in json.dumps(manifest)
    assert sorted(p.name for p in run.glob("*_*.png")) == [f"{i}_{j}.png" for i in (0, 1) for j in range(4)]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    tally = rules.Tally.of((r["testpoints"], r["scores"]) for r in rows)
    assert all(r["scores"] == [1 - i % 2 for i in range(len(r["testpoints"]))] for r in rows)
    assert res["summary"]["unigenbench_overall"] == pytest.approx(100 * rules.overall(tally))
