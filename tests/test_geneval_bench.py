"""GenEval benchmark: prompt generator parity, official layout, folder scoring, official aggregation."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evalsuite import DiffusersGenerator, Sample
from evalsuite.benchmarks.geneval import GenEval, read_metadata
from evalsuite.benchmarks.geneval_prompts import generate_suite, to_jsonl
from evalsuite.data import resolve
from evalsuite.evaluate import evaluate
from evalsuite.rewards.geneval import GENEVAL_OBJECT_NAMES
from evalsuite.rewards.geneval_rules import validate_metadata


def test_generator_reproduces_the_official_prompt_file(data_dir):
    names = resolve("geneval/object_names.txt", data_dir).read_text().splitlines()
    assert tuple(names) == GENEVAL_OBJECT_NAMES
    official = resolve("geneval/evaluation_metadata.jsonl", data_dir).read_text()
    assert to_jsonl(generate_suite(names, seed=43, per_task=100)) == official  # byte for byte
    other = generate_suite(seed=7, per_task=20)
    assert other != generate_suite(seed=43, per_task=20)
    for item in other:
        validate_metadata(item, GENEVAL_OBJECT_NAMES)
    held_out = ["apple", "bed", "book", "car", "clock", "cup", "dog", "person"]
    subset = generate_suite(held_out, seed=1, per_task=5)
    assert {c["class"] for item in subset for c in item["include"]} <= set(held_out)
    assert not any(c.get("color") and c["class"] == "person" for item in subset for c in item["include"])


def test_metadata_files_with_an_empty_include_are_refused_naming_the_record(tmp_path):
    from evalsuite.errors import ConfigError

    good = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    empty = {"tag": "single_object", "include": [], "prompt": "a photo"}
    path = tmp_path / "metadata.jsonl"
    path.write_text(to_jsonl([good, empty]))
    with pytest.raises(ConfigError, match=r"metadata\.jsonl line 2 \(prompt 00001\): .*'include' is empty"):
        GenEval(metadata=str(path)).prompts()
    path.write_text(to_jsonl([good]))
    assert [r.prompt for r in GenEval(metadata=str(path)).prompts()] == ["a photo of a cat"]


@pytest.fixture(scope="module")
def tiny_geneval(tiny_dir, tmp_path_factory):
    from evalsuite.tiny.open_clip import write_tiny_open_clip

    clip = write_tiny_open_clip(tmp_path_factory.mktemp("oc") / "clip", "ViT-L-14", seed=0)
    return {"detector_model": str(tiny_dir / "mask2former"), "clip_model": str(clip),
            "threshold": 0.0, "counting_threshold": 0.0}


@pytest.fixture(scope="module")
def one_per_tag(data_dir, tmp_path_factory):
    rows = read_metadata(resolve("geneval/evaluation_metadata.jsonl", data_dir))
    picked = [next(r for r in rows if r["tag"] == tag) for tag in
              ("single_object", "two_object", "counting", "colors", "position", "color_attr")]
    path = tmp_path_factory.mktemp("meta") / "metadata.jsonl"
    path.write_text(to_jsonl(picked))
    return str(path), picked


def test_end_to_end_in_the_official_layout(tiny_dir, tiny_geneval, one_per_tag, tmp_path):
    path, picked = one_per_tag
    gen = DiffusersGenerator.from_pretrained(str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2,
                                             height=64, width=64)
    bench = GenEval(metadata=path, **tiny_geneval)
    res = evaluate(bench, tmp_path, generator=gen, images_per_prompt=2, score_batch_size=4)
    for i, meta in enumerate(picked):  # the official layout, readable by the official evaluator
        folder = tmp_path / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    ps = res.per_sample
    assert list(res.table.index) == ["single_object", "two_object", "counting", "colors", "position",
                                     "color_attr"]
    assert ps["error"].isna().all() and set(ps["reason"].dropna()) != set()
    per_task = ps.groupby("tag")["correct"].mean()
    assert res.summary["overall"] == pytest.approx(per_task.mean())
    assert res.summary["correct_images"] == pytest.approx(ps["correct"].mean())
    assert res.summary["correct_prompts"] == pytest.approx(ps.groupby("group")["correct"].any().mean())
    d = bench.describe()
    assert d["mode"] == "official" and d["detector"] == "transformers"


def test_scores_a_folder_made_elsewhere(tiny_geneval, one_per_tag, tmp_path):
    path, picked = one_per_tag
    rng = np.random.default_rng(0)
    for i, meta in enumerate(picked):  # as the official generation script lays it out
        (tmp_path / "made" / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / "made" / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for k in range(4):
            img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            img.save(tmp_path / "made" / f"{i:05d}" / "samples" / f"{k:04d}.png")
    bench = GenEval(metadata=path, **tiny_geneval)
    res = evaluate(bench, tmp_path / "scored", images_dir=tmp_path / "made")
    assert len(res.per_sample) == 24
    # rule outcomes are the reward library's, image by image
    made = tmp_path / "made"
    direct = bench.reward.score([
        Sample(f"{i:05d}/{k}", m["prompt"], Image.open(made / f"{i:05d}" / "samples" / f"{k:04d}.png"),
               metadata=m) for i, m in enumerate(picked) for k in range(4)])
    assert list(res.per_sample["correct"]) == [bool(d["correct"]) for d in direct.details]


def test_official_aggregation_by_hand():
    bench = GenEval.__new__(GenEval)
    ps = pd.DataFrame({
        "group": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
        "tag": ["counting"] * 4 + ["counting"] * 4 + ["colors"] * 4,
        "correct": [True, False, False, False, False, False, False, False, True, True, True, False],
        "error": [None] * 11 + ["sample 'c/3': corrupt"],
    })
    table = GenEval.aggregate(bench, ps)
    assert table.loc["counting", "accuracy"] == pytest.approx(1 / 8)
    assert table.loc["colors", "accuracy"] == pytest.approx(3 / 4)
    s = GenEval.summary(bench, table, ps)
    assert s["overall"] == pytest.approx((1 / 8 + 3 / 4) / 2)  # unweighted mean of tasks, not of images
    assert s["correct_images"] == pytest.approx(4 / 12) and s["correct_prompts"] == pytest.approx(2 / 3)
    assert s["errors"] == 1
