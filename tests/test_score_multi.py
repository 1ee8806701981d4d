"""``evalsuite score --reward a,b,c``: a column per reward, equal to single-reward runs; named sets; exit
codes; and ``evalsuite list`` showing licenses / terms with non-commercial data flagged."""

import json
import logging

import pytest
from PIL import Image

from evalsuite.benchmark import Benchmark
from evalsuite.cli import SCORE_ERRORS_EXIT, main
from evalsuite.registry import Entry, registry
from evalsuite.scoring import read_items, reward_list, score_items_by_reward


@pytest.fixture()
def listing(tmp_path):
    for name, colour in (("w", "white"), ("n", "navy"), ("o", "olive")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{name}.png")
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps({"id": f"i{k}", "image": f"{k}.png", "prompt": f"a {k} square"}) + "\n"
                            for k in ("w", "n", "o")))
    return path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_columns_equal_single_reward_runs(tiny_dir, listing, tmp_path, capsys):
    single = {}
    for name, model in (("pickscore", tiny_dir / "clip"), ("clipscore", tiny_dir / "open-clip-vit-b-32")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["score", str(listing), "--reward", name, "--option", f"model={model}",
                     "--output", str(out), "--device", "cpu"]) == 0
        single[name] = _rows(out)
    out = tmp_path / "multi.jsonl"
    assert main(["score", str(listing), "--reward", "brightness,pickscore,clipscore", "--output", str(out),
                 "--option", f"pickscore.model={tiny_dir / 'clip'}", "--device", "cpu",
                 "--option", f"clipscore.model={tiny_dir / 'open-clip-vit-b-32'}"]) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["iw", "in", "io"] and all(r["error"] is None for r in rows)
    for name, ref in single.items():
        assert [r[name] for r in rows] == [r["score"] for r in ref]  # same model, same images: same numbers
        assert [r[f"{name}.detail.token_count"] for r in rows] == [r["detail.token_count"] for r in ref]
    assert rows[0]["brightness"] == 1.0  # white
    printed = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split(":")[0] for line in printed] == ["brightness", "pickscore", "clipscore"]
    assert all("over 3 images (0 not applicable, 0 errors)" in line for line in printed)


def test_each_reward_is_built_once_and_released_before_the_next(listing):
    built = []

    def factory(name):
        def make():
            from evalsuite.registry import get_reward

            built.append(name)
            return get_reward("brightness")
        return make

    items = read_items(listing)
    rows, by_reward = score_items_by_reward({"a": factory("a"), "b": factory("b")}, items, batch_size=1)
    assert built == ["a", "b"] and [r["a"] for r in rows] == [r["b"] for r in rows]
    assert list(by_reward) == ["a", "b"] and len(by_reward["a"]) == 3


@pytest.fixture()
def brightness_copy():
    registry.register("rewards", "brightness_copy", registry.get("rewards", "brightness"))
    yield "brightness_copy"
    registry._entries["rewards"].pop("brightness_copy", None)


def test_a_bad_image_errors_in_every_column_exit_3_and_allow_errors(listing, tmp_path, capsys,
                                                                    brightness_copy):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with listing.open("a") as f:
        f.write(json.dumps({"id": "bad", "image": "bad.png", "prompt": "broken"}) + "\n")
    out = tmp_path / "multi.jsonl"
    cols = ["score", str(listing), "--reward", f"brightness,{brightness_copy}", "--output", str(out)]
    assert main(cols) == SCORE_ERRORS_EXIT
    captured = capsys.readouterr()
    rows = _rows(out)
    assert len(rows) == 4 and [r["brightness"] for r in rows[:3]] == [r[brightness_copy] for r in rows[:3]]
    assert rows[3]["brightness"] is None and "'bad'" in rows[3]["brightness.error"]
    assert rows[3]["error"].startswith("brightness: ") and f"; {brightness_copy}: " in rows[3]["error"]
    assert "1 errors" in captured.out and "error: brightness:" in captured.err
    assert main([*cols, "--allow-errors"]) == 0
    assert main(["score", str(listing), "--reward", "brightness,brightness:1"]) == SCORE_ERRORS_EXIT
    assert "multi: mean" in capsys.readouterr().out  # a ':' keeps the weighted sum: one "multi" column


def test_reward_options_are_checked_per_reward_before_scoring(listing, capsys, brightness_copy):
    reward = ["score", str(listing), "--reward", f"brightness,{brightness_copy}"]
    assert main([*reward, "--option", "brightness.nope=1"]) == 1
    assert "brightness does not take option 'nope'" in capsys.readouterr().err
    assert main([*reward, "--option", "pickscore.model=x"]) == 1
    assert f"'pickscore' is not one of the rewards scored (brightness, {brightness_copy})" in (
        capsys.readouterr().err)


def test_unknown_reward_in_a_list_names_the_registered_ones(listing, capsys):
    assert main(["score", str(listing), "--reward", "brightness,aesthetic_v9"]) == 1
    err = capsys.readouterr().err
    assert "no reward named 'aesthetic_v9'; registered:" in err and "pickscore" in err


def test_named_set_is_the_drawbench_paper_list_minus_unregistered(monkeypatch, caplog):
    monkeypatch.delitem(registry._entries["rewards"], "imagereward")
    paper = registry.get("benchmarks", "drawbench").paper_rewards
    with caplog.at_level(logging.WARNING, logger="evalsuite"):
        names = reward_list("drawbench")
    assert names == [n for n in paper if n in registry.names("rewards")] and "imagereward" not in names
    assert "reward set drawbench: not registered in this install, skipped: imagereward" in caplog.text
    assert reward_list("pickscore") is None and reward_list("pickscore:1,ocr:0.5") is None


class NonCommercialBench(Benchmark):
    name = "nc_bench"
    license = "CC BY-NC 4.0"

    def prompts(self, data_dir=None):
        return []

    def score(self, samples):
        return []

    def aggregate(self, per_sample):
        return per_sample


def test_list_shows_licenses_and_flags_non_commercial_terms(capsys):
    # by "module:attr", as built-ins are (`list` cannot print the target of a class registered at runtime)
    registry._entries["benchmarks"]["nc_bench"] = Entry(
        "benchmarks", "nc_bench", f"{__name__}:NonCommercialBench", "runtime")
    try:
        assert main(["list", "--json"]) == 0
        rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)["entries"]}
        assert rows[("benchmark", "nc_bench")]["license"] == "CC BY-NC 4.0 [non-commercial]"
        assert rows[("benchmark", "drawbench")]["license"].startswith("Apache-2.0")  # from data_files
        assert rows[("benchmark", "geneval")]["license"] == "MIT"
        assert rows[("reward", "imagereward")]["license"] == "Apache-2.0"  # the reward's own attribute
        assert rows[("reward", "brightness")]["license"] == ""  # no weights, nothing to say
        assert main(["list", "--kind", "benchmarks"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert "LICENSE/TERMS" in table[0] and any("CC BY-NC 4.0 [non-commercial]" in t for t in table)
    finally:
        registry._entries["benchmarks"].pop("nc_bench", None)


def test_terms_join_distinct_licenses_and_flag_non_commercial_ones():
    from evalsuite.data_files import terms

    assert terms(["CC BY-NC 4.0", "MIT", "MIT", ""]) == "CC BY-NC 4.0; MIT [non-commercial]"
    assert terms(["research use, non-commercial"]) == "research use, non-commercial [non-commercial]"
    assert terms(["Apache-2.0", "UNC open license"]) == "Apache-2.0; UNC open license"
    assert terms([]) == ""
