"""DPG-Bench: question graph, official vs corrected rules (hand-computed), quadrants, tiny end to end.

The question graph here is written by the test in the official CSV format (the real dpg_bench.csv is not in
the data dir). Item ids 0, 1, 2 are real DPG-Bench prompt ids, so the real prompts.jsonl is used with it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evalsuite import ConfigError, DiffusersGenerator, Sample
from evalsuite.benchmarks import dpg_rules as rules
from evalsuite.benchmarks.dpg_bench import DPGBench, make_grid, quadrant_box, split_grid, write_official_grids
from evalsuite.evaluate import evaluate

# (item_id, proposition_id, dependency, tuple, question), in file order. Item "0" comes first, so official
# mode never asks its "global" question. Item "1" lists child 4 before its parent 3 (itself a child of 1 and
# 2). Item "2" comes in two blocks: official mode keeps only the second. (A "dependency" with a comma keeps
# pandas from reading the column as integers, which the official script needs.)
MAIN_ROWS = [
    ("0", 1, "0", "global - (morning)", "Is it morning?"),
    ("0", 2, "0", "entity - whole (cabbage)", "Is there a cabbage?"),
    ("0", 3, "2", "attribute - color (cabbage, green)", "Is the cabbage green?"),
    ("0", 4, "2", "other - count (cabbage, ==8)", "Are there eight cabbages?"),
    ("2", 1, "0", "entity - whole (lamp)", "Is there a lamp?"),
    ("2", 2, "1", "attribute - texture (lamp, brass)", "Is the lamp brass?"),
    ("1", 1, "0", "entity - whole (truck)", "Is there a truck?"),
    ("1", 2, "1", "attribute - color (truck, red)", "Is the truck red?"),
    ("1", 4, "3", "attribute - texture (truck, glossy)", "Is the parked truck glossy?"),
    ("1", 3, "1,2", "entity - state (truck, parked)", "Is the truck parked?"),
    ("2", 3, "0", "entity - whole (desk)", "Is there a desk?"),
    ("2", 4, "3", "relation - spatial (lamp, desk; on)", "Is there a lamp on the desk?"),
]
# Quadrant k of every item answers "no" to these questions, "yes" to everything else.
NO = {
    0: {"Is there a lamp?"},
    1: {"Is there a cabbage?", "Is there a truck?", "Is there a desk?"},
    2: {"Is it morning?", "Is the truck parked?"},
    3: {"Is the cabbage green?", "Is the truck red?", "Is there a lamp on the desk?"},
}


def write_graph_csv(path: Path, rows) -> Path:
    """A question graph in the official column layout (extra columns filled like the real file)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rules.CSV_COLUMNS)
        for item, pid, dep, tup, question in rows:
            broad, _, detailed = tup.split("(")[0].partition("-")
            w.writerow([item, "prompt text, with a comma", "kw", pid, dep, broad.strip(), detailed.strip(),
                        tup, question])
    return path


def quadrant_image(k: int, size: int = 32) -> Image.Image:
    """Solid image whose red channel encodes the quadrant index."""
    return Image.new("RGB", (size, size), (10 + 40 * k, 80, 160))


class FakeVQA:
    """Deterministic: reads the quadrant from the pixel colour and answers from ``NO``."""

    def __init__(self, no=None, yes_word: str = "yes"):
        self.no = NO if no is None else no
        self.yes_word = yes_word
        self.calls = 0

    def answer(self, images, questions):
        self.calls += 1
        out = []
        for im, q in zip(images, questions):
            k = round((im.getpixel((im.width // 2, im.height // 2))[0] - 10) / 40)
            out.append("no" if q in self.no.get(k, ()) else self.yes_word)
        return out

    def describe(self):
        return {"vqa": "fake", "vqa_model": "table"}


@pytest.fixture
def main_csv(tmp_path) -> Path:
    return write_graph_csv(tmp_path / "dpg_bench.csv", MAIN_ROWS)


def scored(bench: DPGBench, data_dir, ids=("0", "1", "2"), size: int = 32) -> pd.DataFrame:
    records = [r for r in bench.prompts(data_dir) if r.id in ids]
    samples = [s.with_image(quadrant_image(int(s.id.rsplit("/", 1)[1]), size))
               for s in bench.samples(records)]
    rows = bench.score(samples)
    return pd.DataFrame([{"id": s.id, **r} for s, r in zip(samples, rows)])


# -- question graph ------------------------------------------------------------------------------------
def test_graph_official_skips_first_row_and_replaces_split_items(main_csv):
    rows = pd.read_csv(main_csv, dtype=str, keep_default_na=False).to_dict(orient="records")
    official, corrected = rules.build_graph(rows, "official"), rules.build_graph(rows, "corrected")
    assert list(official.items["0"]) == [2, 3, 4] and list(corrected.items["0"]) == [1, 2, 3, 4]
    assert list(official.items["2"]) == [3, 4] and list(corrected.items["2"]) == [1, 2, 3, 4]
    assert list(official.items["1"]) == list(corrected.items["1"]) == [1, 2, 4, 3]
    assert official.items["1"][4].parents == (3,) and official.items["2"][4].question == MAIN_ROWS[-1][4]
    assert official.stats()["skipped_first_row"] == "0/1" and official.replaced_blocks == ["2"]
    assert corrected.stats()["skipped_first_row"] is None and corrected.replaced_blocks == []


def test_graph_parsing_details(tmp_path):
    rows = [{"item_id": "a", "proposition_id": "1", "dependency": "0", "tuple": "t (x)",
             "question_natural_language": "q1"},
            {"item_id": "a", "proposition_id": "2.0", "dependency": " 0, 1 ", "tuple": "t (x)",
             "question_natural_language": "q2"},
            {"item_id": "a", "proposition_id": "1", "dependency": "0", "tuple": "t (x)",
             "question_natural_language": "q1 again"}]
    g = rules.build_graph(rows, "corrected")
    assert g.items["a"][2].parents == (0, 1) and list(g.items["a"]) == [1, 2]
    assert g.items["a"][1].question == "q1 again" and g.duplicate_ids == [("a", 1)]
    with pytest.raises(ValueError, match="row 0"):
        rules.build_graph([{**rows[0], "dependency": "1,"}], "corrected")
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,question\nx,y\n")
    with pytest.raises(ConfigError, match="missing columns"):
        DPGBench(vqa=FakeVQA(), questions_csv=bad).graph()
    with pytest.raises(ConfigError, match="mode"):
        DPGBench(vqa=FakeVQA(), mode="strict")


def test_categories_keys():
    assert rules.l2_category("global - (morning)") == "global -" and rules.l1_category("global -") == "global"
    assert rules.l2_category("entity - whole (x-ray machine)") == "entity - whole"
    assert rules.l1_category(rules.l2_category("other (a-b)")) == "other"  # '-' after '(' never counts
    assert rules.l1_category("relation - non-spatial") == "relation"
    l1, l2 = rules.category_scores([("entity - whole", 1), ("entity - whole", 0), ("entity - state", 1),
                                    ("global -", 0)])
    assert l2 == {"entity - state": (100.0, 1), "entity - whole": (50.0, 2), "global -": (0.0, 1)}
    assert l1["entity"] == (pytest.approx(200 / 3), 3)  # pooled over questions, not a mean of L2 means
    assert l1["global"] == (0.0, 1)


def test_official_graph_is_resolved_and_verified(tmp_path, data_dir, main_csv):
    from evalsuite.data import ChecksumError, DataFileNotFoundError

    bench = DPGBench(vqa=FakeVQA())
    assert bench.describe()["question_graph"].startswith("official dpg_bench/dpg_bench.csv (git blob 98457fc")
    with pytest.raises(DataFileNotFoundError, match="dpg_bench.csv"):  # offline, not in the data dir
        bench.prompts(data_dir)
    copy = tmp_path / "data" / "dpg_bench"
    copy.mkdir(parents=True)
    (copy / "prompts.jsonl").write_bytes((data_dir / "dpg_bench" / "prompts.jsonl").read_bytes())
    (copy / "dpg_bench.csv").write_bytes(main_csv.read_bytes())  # not the pinned upstream file
    with pytest.raises(ChecksumError):
        DPGBench(vqa=FakeVQA()).prompts(tmp_path / "data")


def test_questions_from_sample_metadata():
    questions = [
        {"pid": 1, "question": "Is there a truck?", "tuple": "entity - whole (truck)", "parents": [0]},
        {"pid": 2, "question": "Is the truck red?", "tuple": "attribute - color (truck)", "parents": [1]},
    ]
    sample = Sample("anything/1", "a red truck", image=quadrant_image(1), metadata={"questions": questions})
    (rec,) = DPGBench(mode="corrected", vqa=FakeVQA()).score([sample])  # no graph file needed
    assert rec["answers"] == ["no", "yes"] and rec["score"] == 0.0 and rec["n_zeroed"] == 1


# -- dependency zeroing --------------------------------------------------------------------------------
def test_zeroing_chain_in_order_is_the_same_in_both_modes():
    raw, parents = {1: 0.0, 2: 1.0, 3: 1.0}, {1: (0,), 2: (1,), 3: (2,)}
    assert rules.official_zeroing(raw, parents) == rules.corrected_zeroing(raw, parents) == {1: 0, 2: 0, 3: 0}
    assert rules.official_zeroing({1: 1.0, 2: 1.0, 3: 0.0}, parents) == {1: 1, 2: 1, 3: 0}


def test_zeroing_child_listed_before_parent():
    parents = {1: (0,), 3: (2,), 2: (1,)}
    raw = {1: 0.0, 3: 1.0, 2: 1.0}
    assert rules.official_zeroing(raw, parents) == {1: 0, 3: 1, 2: 0}  # 2 not yet zeroed when 3 was checked
    assert rules.corrected_zeroing(raw, parents) == {1: 0, 3: 0, 2: 0}


def test_zeroing_missing_parents():
    with pytest.raises(rules.MissingParentError, match="proposition 1"):
        rules.official_zeroing({2: 1.0}, {2: (1,)})
    assert rules.corrected_zeroing({2: 1.0}, {2: (1,)}) == {2: 1.0}
    parents = {1: (0,), 2: (1,), 3: (2, 9)}
    # the script stops at the first parent scoring 0, so the missing 9 is looked up only if 2 is yes
    assert rules.official_zeroing({1: 1.0, 2: 0.0, 3: 1.0}, parents) == {1: 1, 2: 0, 3: 0}
    with pytest.raises(rules.MissingParentError):
        rules.official_zeroing({1: 1.0, 2: 1.0, 3: 1.0}, parents)
    assert rules.missing_parents(parents) == [9]


def test_zeroing_multiple_parents_and_cycles():
    parents = {1: (0,), 2: (0,), 3: (0, 1, 2)}
    for mode in rules.MODES:
        assert rules.zero_dependents({1: 1.0, 2: 0.0, 3: 1.0}, parents, mode) == {1: 1, 2: 0, 3: 0}
        assert rules.zero_dependents({1: 1.0, 2: 1.0, 3: 1.0}, parents, mode) == {1: 1, 2: 1, 3: 1}
    cycle = {1: (2,), 2: (1,)}
    assert rules.corrected_zeroing({1: 1.0, 2: 0.0}, cycle) == {1: 0, 2: 0}
    assert rules.official_zeroing({1: 1.0, 2: 0.0}, cycle) == {1: 0, 2: 0}
    assert rules.corrected_zeroing({1: 1.0, 2: 1.0}, cycle) == {1: 1, 2: 1}


def test_yes_matching():
    assert rules.is_yes("yes", "official") == rules.is_yes("yes", "corrected") == 1.0
    for answer in ("Yes", "yes.", " yes"):
        assert rules.is_yes(answer, "official") == 0.0 and rules.is_yes(answer, "corrected") == 1.0
    assert rules.is_yes("yes, a dog", "corrected") == rules.is_yes("no", "corrected") == 0.0


# -- official vs corrected on the hand-worked graph ----------------------------------------------------
# Quadrant scores by hand (see MAIN_ROWS / NO):
#   official  item 0 asks E,C,N only: [1, 0 (E no -> C,N zeroed), 1, 2/3]            -> 2/3
#             item 1 T,R,S,P:        [1, 1/4 (S kept: P not zeroed yet), 1/2, 1/2]   -> 9/16
#             item 2 D,O only:       [1, 0, 1, 1/2]                                  -> 5/8
#   corrected item 0 G,E,C,N:        [1, 1/4, 3/4, 3/4]                              -> 11/16
#             item 1:                [1, 0 (S's grandparent T is no), 1/2, 1/4]      -> 7/16
#             item 2 L,B,D,O:        [1/2, 1/2, 1, 3/4]                              -> 11/16
QUADRANTS = {
    "official": {"0": [1, 0, 1, 2 / 3], "1": [1, 0.25, 0.5, 0.5], "2": [1, 0, 1, 0.5]},
    "corrected": {"0": [1, 0.25, 0.75, 0.75], "1": [1, 0, 0.5, 0.25], "2": [0.5, 0.5, 1, 0.75]},
}
OVERALL = {"official": 8900 / 144, "corrected": 2900 / 48}
# official: last quadrant, before zeroing (item 0's global question is never asked);
# corrected: all quadrants, after zeroing.
L2 = {
    "official": {"attribute - color": (0.0, 2), "attribute - texture": (100.0, 1),
                 "entity - state": (100.0, 1), "entity - whole": (100.0, 3), "other - count": (100.0, 1),
                 "relation - spatial": (0.0, 1)},
    "corrected": {"attribute - color": (50.0, 8), "attribute - texture": (50.0, 8),
                  "entity - state": (25.0, 4), "entity - whole": (75.0, 16), "global -": (75.0, 4),
                  "other - count": (75.0, 4), "relation - spatial": (50.0, 4)},
}
L1 = {
    "official": {"attribute": (100 / 3, 3), "entity": (100.0, 4), "other": (100.0, 1), "relation": (0.0, 1)},
    "corrected": {"attribute": (50.0, 16), "entity": (65.0, 20), "global": (75.0, 4), "other": (75.0, 4),
                  "relation": (50.0, 4)},
}


@pytest.mark.parametrize("mode", rules.MODES)
def test_modes_hand_computed(mode, main_csv, data_dir):
    fake = FakeVQA()
    bench = DPGBench(mode=mode, vqa=fake, questions_csv=main_csv)
    per_sample = scored(bench, data_dir)
    assert fake.calls == 1  # one batched call for the whole score() batch
    got = {item: list(g.sort_values("quadrant")["score"]) for item, g in per_sample.groupby("item_id")}
    for item, want in QUADRANTS[mode].items():
        assert got[item] == pytest.approx(want, abs=1e-12), item
    table = bench.aggregate(per_sample)
    summary = bench.summary(table, per_sample)
    assert summary["dpg_score"] == pytest.approx(OVERALL[mode], abs=1e-9)
    assert table.loc["DPG-Bench", "score"] == summary["dpg_score"] and table.loc["DPG-Bench", "n"] == 3
    assert summary["mode"] == mode and summary["vqa"] == "fake" and summary["n_items_left_out"] == 0
    for level, want in (("L2", L2[mode]), ("L1", L1[mode])):
        part = table[table["level"] == level]
        got = {k.removeprefix(f"{level}/"): (pytest.approx(r["score"]), r["n"]) for k, r in part.iterrows()}
        assert got == want, level
    row = per_sample.set_index("id").loc["1/1"]
    assert row["answers"] == ["no", "yes", "yes", "yes"] and row["pids"] == [1, 2, 4, 3]
    assert row["n_zeroed"] == (2 if mode == "official" else 3)
    assert bench.describe()["mode"] == mode and bench.describe()["question_graph"].startswith("custom")


def test_first_row_parent_drops_the_item_in_official_mode(tmp_path, data_dir):
    # like partiprompts97 in the real CSV: the skipped first row is the parent of the item's other questions
    path = write_graph_csv(tmp_path / "g.csv", [
        ("0", 1, "0", "entity - whole (cabbage)", "Is there a cabbage?"),
        ("0", 2, "1", "attribute - color (cabbage, green)", "Is the cabbage green?"),
        ("1", 1, "0", "entity - whole (truck)", "Is there a truck?"),
        ("1", 2, "1", "attribute - color (truck, red)", "Is the truck red?"),
    ])
    official = DPGBench(mode="official", vqa=FakeVQA(no={}), questions_csv=path)
    per_sample = scored(official, data_dir, ids=("0", "1"))
    dropped = per_sample[per_sample["item_id"] == "0"]
    assert dropped["score"].isna().all() and dropped["reason"].str.contains("KeyError").all()
    summary = official.summary(official.aggregate(per_sample), per_sample)
    assert summary["n_items"] == 1 and summary["n_items_left_out"] == 1 and summary["dpg_score"] == 100.0
    corrected = DPGBench(mode="corrected", vqa=FakeVQA(no={}), questions_csv=path)
    per_sample = scored(corrected, data_dir, ids=("0", "1"))
    summary = corrected.summary(corrected.aggregate(per_sample), per_sample)
    assert summary["n_items"] == 2 and summary["dpg_score"] == 100.0


def test_capitalised_answers_count_only_in_corrected_mode(main_csv, data_dir):
    scores = {}
    for mode in rules.MODES:
        bench = DPGBench(mode=mode, vqa=FakeVQA(no={}, yes_word="Yes."), questions_csv=main_csv)
        per_sample = scored(bench, data_dir, ids=("1",))
        scores[mode] = bench.summary(bench.aggregate(per_sample), per_sample)["dpg_score"]
    assert scores == {"official": 0.0, "corrected": 100.0}


def test_bad_samples_do_not_break_the_batch(main_csv, data_dir):
    class Flaky(FakeVQA):
        def answer(self, images, questions):
            if any(im.width == 17 for im in images):
                raise RuntimeError("backend exploded")
            return super().answer(images, questions)

    bench = DPGBench(mode="corrected", vqa=Flaky(), questions_csv=main_csv)
    records = [r for r in bench.prompts(data_dir) if r.id in ("0", "1")]
    samples = [s.with_image(quadrant_image(int(s.id[-1]))) for s in bench.samples(records)]
    samples[1] = samples[1].with_image(quadrant_image(1, size=17))  # VQA fails on this one
    samples[2] = Sample(samples[2].id, samples[2].prompt, metadata=samples[2].metadata)  # no image
    samples.append(Sample("159/0", "not a DPG prompt", image=quadrant_image(0)))  # id absent from the graph
    out = bench.score(samples)
    assert "backend exploded" in out[1]["error"] and "no image" in out[2]["error"]
    assert "no questions" in out[-1]["error"] and out[-1]["score"] is None
    assert all(r["error"] is None and r["score"] is not None
               for i, r in enumerate(out[:-1]) if i not in (1, 2))
    per_sample = pd.DataFrame([{"id": s.id, **r} for s, r in zip(samples, out)])
    summary = bench.summary(bench.aggregate(per_sample), per_sample)
    assert summary["n_items"] == 1 and summary["n_items_left_out"] == 2  # "0" (failed quadrants) and "159"
    assert summary["dpg_score"] == pytest.approx(7 / 16 * 100)

    class Short(FakeVQA):
        def answer(self, images, questions):
            return ["yes"]

    out = DPGBench(vqa=Short(), questions_csv=main_csv).score(samples[4:6])
    assert all("1 answers" in r["error"] for r in out)


# -- quadrants -----------------------------------------------------------------------------------------
def test_quadrant_splitting_of_a_grid():
    cells = [quadrant_image(k) for k in range(4)]
    for k, cell in enumerate(cells):
        cell.putpixel((3, 5), (k, 255, 0))  # a marker that must land back in its own quadrant
    grid = make_grid(cells)
    assert grid.size == (64, 64)
    assert quadrant_box(1, 32) == (32, 0, 64, 32) and quadrant_box(2, 32) == (0, 32, 32, 64)
    assert grid.getpixel((32 + 3, 32 + 5)) == (3, 255, 0)  # bottom-right is quadrant 3
    for k, part in enumerate(split_grid(grid, 32)):
        assert np.array_equal(np.asarray(part), np.asarray(cells[k]))
    assert len(split_grid(grid, 32, pic_num=1)) == 1 and split_grid(grid)[3].size == (32, 32)
    padded = split_grid(grid, 40)[3]  # the script's box past the edge: PIL pads with black
    assert padded.size == (40, 40) and padded.getpixel((30, 30)) == (0, 0, 0)
    with pytest.raises(ValueError, match="differ in size"):
        make_grid([cells[0], quadrant_image(1, 16)])


def test_official_grids_score_like_singles(main_csv, data_dir, tmp_path):
    """Official-layout grids (<id>.png, R x R cells) made elsewhere are scored exactly like our singles."""
    singles = DPGBench(mode="official", vqa=FakeVQA(), questions_csv=main_csv)
    ref = evaluate(singles, tmp_path / "run", generator=PaintingGenerator(), data_dir=data_dir, limit=3)
    grids = tmp_path / "grids"
    paths = write_official_grids(tmp_path / "run", grids, ["0", "1", "2"])
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"] and Image.open(paths[0]).size == (64, 64)
    for resolution in (None, 32):
        bench = DPGBench(mode="official", vqa=FakeVQA(), questions_csv=main_csv, layout="grid",
                         resolution=resolution)
        res = evaluate(bench, tmp_path / f"grid{resolution}", images_dir=grids, data_dir=data_dir, limit=3)
        assert list(res.per_sample["score"]) == list(ref.per_sample["score"])
        assert res.summary["dpg_score"] == pytest.approx(OVERALL["official"])
        assert res.per_sample["image"].iloc[5].endswith("grids/1.png")
    with pytest.raises(ConfigError, match="grid"):
        evaluate(DPGBench(vqa=FakeVQA(), questions_csv=main_csv, layout="grid"), tmp_path / "g",
                 generator=PaintingGenerator(), data_dir=data_dir, limit=1)


class PaintingGenerator:
    """Paints quadrant-coded images (the seed differs per image; the index is read from the request order)."""

    def __init__(self):
        self.count = 0

    def generate(self, requests):
        out = []
        for _ in requests:
            out.append(quadrant_image(self.count % 4))
            self.count += 1
        return out

    def describe(self):
        return {"generator": "painting"}


# -- end to end: tiny FLUX + tiny Qwen2.5-VL ----------------------------------------------------------
@pytest.fixture(scope="module")
def flux(tiny_dir):
    return DiffusersGenerator.from_pretrained(str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2,
                                              height=64, width=64)


@pytest.fixture(scope="module")
def decisive_qwen(tiny_dir, tmp_path_factory) -> Path:
    from tests.test_vqa import decisive_qwen_dir

    return decisive_qwen_dir(tiny_dir, tmp_path_factory)


def by_hand(item: str, yes: dict[int, bool], mode: str) -> float:
    """Quadrant score of items 0 and 1 of MAIN_ROWS, with the dependency structure written out by hand."""
    if item == "0":
        s = {2: yes[2], 3: yes[3] and yes[2], 4: yes[4] and yes[2]}
        if mode == "corrected":
            s[1] = yes[1]
    else:  # order 1, 2, 4 (child of 3), 3 (child of 1 and 2)
        s = {1: yes[1], 2: yes[2] and yes[1], 3: yes[3] and yes[1] and yes[2]}
        s[4] = yes[4] and yes[3] and (mode == "official" or (yes[1] and yes[2]))  # official: 3 not zeroed yet
    return sum(s.values()) / len(s)


def test_end_to_end_tiny_flux_and_tiny_qwen(flux, decisive_qwen, main_csv, data_dir, tmp_path):
    import qwen_vl_utils

    from tests.test_vqa import reference_logits

    run = tmp_path / "run"
    bench = DPGBench(mode="corrected", vqa_model=decisive_qwen, questions_csv=main_csv, batch_size=8)
    res = evaluate(bench, run, generator=flux, data_dir=data_dir, limit=2, score_batch_size=8)
    ps = res.per_sample
    assert len(ps) == 8 and ps["error"].isna().all() and list(ps["item_id"].unique()) == ["0", "1"]
    assert {a for answers in ps["answers"] for a in answers} == {"yes", "no"}

    # answers = the independent per-question forward on the same (fitted) images
    item0 = ps[ps["item_id"] == "0"].iloc[:2]
    images, questions = [], []
    for rel in item0["image"]:
        fitted = qwen_vl_utils.fetch_image({"image": Image.open(run / rel).convert("RGB"), "min_pixels": 3136,
                                            "max_pixels": 16384 * 28 * 28})
        for _, _, _, _, q in MAIN_ROWS[:4]:
            images.append(fitted)
            questions.append(q)
    want = ["yes" if y > n else "no" for y, n in reference_logits(decisive_qwen, images, questions).tolist()]
    assert [a for answers in item0["answers"] for a in answers] == want

    # scores = the hand rule applied to those answers
    quads = {}
    for _, row in ps.iterrows():
        yes = {p: a == "yes" for p, a in zip(row["pids"], row["answers"])}
        assert row["score"] == pytest.approx(by_hand(row["item_id"], yes, "corrected"))
        quads.setdefault(row["item_id"], []).append(row["score"])
    overall = np.mean([np.mean(v) for v in quads.values()]) * 100
    assert res.summary["dpg_score"] == pytest.approx(overall) and res.summary["mode"] == "corrected"
    results = json.loads((run / "results.json").read_text())
    assert results["benchmark"]["vqa"] == "qwen2.5-vl"
    assert results["benchmark"]["vqa_model"] == str(decisive_qwen)
    assert results["benchmark"]["mode"] == "corrected" and "mode" in (run / "summary.md").read_text()

    # the same images as official 2x2 grids, scored in official mode: same answers, official rules
    grids = tmp_path / "grids"
    write_official_grids(run, grids, ["0", "1"])
    official = DPGBench(mode="official", layout="grid", resolution=64, vqa_model=decisive_qwen,
                        questions_csv=main_csv)
    res2 = evaluate(official, tmp_path / "official", images_dir=grids, data_dir=data_dir, limit=2)
    by_id = ps.set_index("id")
    for _, row in res2.per_sample.iterrows():
        before = dict(zip(by_id.loc[row["id"], "pids"], by_id.loc[row["id"], "answers"]))
        assert row["pids"] == ([2, 3, 4] if row["item_id"] == "0" else [1, 2, 4, 3])
        assert row["answers"] == [before[p] for p in row["pids"]]
        yes = {p: a == "yes" for p, a in zip(row["pids"], row["answers"])}
        assert row["score"] == pytest.approx(by_hand(row["item_id"], yes, "official"))
    assert res2.summary["mode"] == "official"
