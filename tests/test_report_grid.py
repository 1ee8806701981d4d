"""The report's sample data: the OCR edit script, the cards blob (status, task, reason kind, evidence,
questions), thumbnails written once. Browser behaviour is in test_report_browser.py."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
from PIL import Image, ImageFile

from evalsuite.report import cards_in, html_report, write_outputs
from evalsuite.report_samples import cards, reason_kind, status_of, thumbnail
from evalsuite.textdiff import text_diff
from tests.browser import external_urls
from tests.test_bad_inputs import png_with_header_size


# -- the OCR diff, worked out by hand ----------------------------------------------------------------------
@pytest.mark.parametrize(("expected", "recognized", "ops"), [
    ("OPEN", "OPEN", [("=", "OPEN")]),
    ("OPEN", "0PEN", [("-", "O"), ("+", "0"), ("=", "PEN")]),  # one substitution
    ("HELLO", "HELO", [("=", "HE"), ("-", "L"), ("=", "LO")]),  # one deletion
    ("cat", "cart", [("=", "ca"), ("+", "r"), ("=", "t")]),  # one insertion
    ("AB", "XY", [("-", "AB"), ("+", "XY")]),  # a run of edits: what is missing, then what came instead
    ("", "ab", [("+", "ab")]),
    ("ab", "", [("-", "ab")]),
    ("", "", []),
    # a doubled letter is marked at its first copy (the backtrace keeps matches at the end first)
    ("Stop here", "Stp heere", [("=", "St"), ("-", "o"), ("=", "p h"), ("+", "e"), ("=", "ere")]),
])
def test_text_diff_by_hand(expected, recognized, ops):
    assert text_diff(expected, recognized) == ops


@pytest.mark.parametrize(("expected", "recognized", "distance"), [
    ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("ab", "ba", 2), ("GRAND OPENING", "GRAN OPENNING", 2),
])
def test_text_diff_is_a_minimal_script_that_rebuilds_both_strings(expected, recognized, distance):
    ops = text_diff(expected, recognized)
    assert "".join(t for k, t in ops if k != "+") == expected
    assert "".join(t for k, t in ops if k != "-") == recognized
    # within a run of edits a substitution pairs one '-' char with one '+' char
    runs = re.findall(r"[-+]+", "".join("=" if k == "=" else k * len(t) for k, t in ops))
    assert sum(max(r.count("-"), r.count("+")) for r in runs) == distance


# -- cards ---------------------------------------------------------------------------------------------------
EVIDENCE = {"size": [64, 64], "threshold": 0.3,
            "kept": [{"class": "dog", "box": [20.0, 0.0, 40.0, 30.0], "score": 0.91,
                      "clauses": ["include[1]"], "failed": []}],
            "below": [{"class": "cat", "box": [0.0, 0.0, 10.0, 10.0], "score": 0.27}]}


def test_status_of_each_kind_of_row():
    assert status_of({"correct": True, "score": 0.0}) == "ok"  # correct wins over a zero score
    assert status_of({"correct": False, "score": 1.0}) == "fail"
    assert status_of({"score": 0.0}) == "fail" and status_of({"score": 0.4}) == "ok"
    assert status_of({"score": None, "error": "sample 'x': image.png is truncated"}) == "error"
    assert status_of({"score": float("nan"), "not_applicable": "no quoted text"}) == "na"


@pytest.mark.parametrize(("reason", "kind"), [
    ("include[0]: expected cat>=1, found 0", "count"),
    ("include[0]: expected cat==2, found 3", "count"),
    ("include[1]: expected red car>=1, found 0 red; and 1 blue", "colour"),
    ("include[1]: expected cup left of include[0], found right of", "position"),
    ("include[1]: no target for cup to be above (include[0] failed)", "position"),
    ("exclude[0]: expected dog<3, found 3", "exclude: too many"),
    ("include[0]: expected cat>=1, found 0; include[1]: expected dog>=1, found 0", "count"),
    ("sample 'a/0': image 'x.png' is truncated", "sample …: image … is truncated"),
    ("score below 0.5", "score below N"),
])
def test_reason_kind_groups_like_failures(reason, kind):
    assert reason_kind(reason) == kind


def test_cards_carry_what_each_benchmark_records(tmp_path):
    rows = [
        {"id": "00000/0", "group": "00000", "prompt": "a cat and a dog", "image": "a.png",
         "tag": "two_object", "correct": False, "score": 0.0, "error": None, "evidence": EVIDENCE,
         "reason": "include[0]: expected cat>=1, found 0"},
        {"id": "p/0", "group": "p", "prompt": 'a sign "OPEN"', "image": "b.png", "score": 0.75,
         "ocr.target": "OPEN", "ocr.recognized": "0PEN", "error": None},
        {"id": "d/1", "group": "d", "prompt": "dpg", "image": "c.png", "score": 0.5, "error": None,
         "questions": ["is there a cat?", "is the cat black?"], "answers": ["yes", "no"],
         "raw": [True, False], "final": [1.0, 0.0]},
        {"id": "t/0", "group": "t", "prompt": "tiif", "image": "d.png", "score": 0.5, "error": None,
         "metadata": {"dimension": "color", "questions": ["red?", "round?"], "answers": ["yes", "yes"]},
         "preds": ["yes", "no"], "hits": [True, False], "raw": "Q1: yes Q2: no"},
        {"id": "g/0", "group": "g", "prompt": "ge2", "image": "e.png", "score": 0.6, "error": None,
         "metadata": {"vqa_list": [["Is there a cat?", "Yes"]]}, "question_scores": [0.61234]},
    ]
    got = {c["id"]: c for c in cards(pd.DataFrame(rows))}
    first = got["00000/0"]
    assert (first["status"], first["task"], first["kind"]) == ("fail", "two_object", "count")
    assert first["ev"] == EVIDENCE
    assert first["thumb"] is None  # no output folder given: no thumbnails
    assert got["p/0"]["ocr"] == [("-", "O"), ("+", "0"), ("=", "PEN")]
    assert got["d/1"]["qa"] == [{"q": "is there a cat?", "a": "yes", "s": 1.0},
                                {"q": "is the cat black?", "a": "no", "s": 0.0}]
    missing_parent = dict(rows[2], final=None)  # DPG official mode, a parent missing: only raw answers
    assert [q["s"] for q in cards(pd.DataFrame([missing_parent]))[0]["qa"]] == [1.0, 0.0]
    assert got["t/0"]["task"] == "color"
    assert got["t/0"]["qa"] == [{"q": "red?", "a": "yes", "gold": "yes", "s": 1.0},
                                {"q": "round?", "a": "no", "gold": "yes", "s": 0.0}]
    assert got["g/0"]["qa"] == [{"q": "Is there a cat?", "s": 0.6123}]
    assert "qa" not in first and "ev" not in got["p/0"]


def test_blip_vqa_questions_echo_tokens_and_compbench_evidence_reach_the_cards():
    """As T2I-CompBench and DenseAlignBench record them: per-scorer ``blip_``/``spatial_`` columns, the
    companion's ``promptecho.`` columns."""
    rows = [
        {"id": "color/000/0", "group": "color/000", "prompt": "a green bench and a blue bowl",
         "image": "a.png", "category": "color", "score": 0.0321, "error": None, "blip_score": 0.0321,
         "blip_questions": ["a green bench?", "a blue bowl?"], "blip_p_yes": [0.123456, 0.26],
         "blip_n_questions": 2},
        {"id": "complex/000/0", "group": "complex/000", "prompt": "a hat on a coat", "image": "b.png",
         "category": "complex", "score": 0.5, "error": None, "blip_score": 0.9, "blip_questions": ["a hat?"],
         "blip_p_yes": [0.9], "spatial_score": 0.1, "spatial_evidence": EVIDENCE},
        {"id": "0000/0", "group": "0000", "prompt": "a red cube", "image": "c.png", "score": -3.5,
         "error": None, "promptecho": -3.5, "promptecho.n_caption_tokens": 3,  # not the tokens themselves
         "n_questions": 2, "promptecho.query": "Describe this image in detail.",
         "promptecho.caption_tokens": [[0, 1, -1.0], [1, 5, -6.0], [5, 10, -3.5]]},
    ]
    got = {c["id"]: c for c in cards(pd.DataFrame(rows))}
    assert got["color/000/0"]["task"] == "color"
    assert got["color/000/0"]["qa"] == [{"q": "a green bench?", "s": 0.1235},
                                        {"q": "a blue bowl?", "s": 0.26}]
    assert got["complex/000/0"]["qa"] == [{"q": "a hat?", "s": 0.9}]
    assert got["complex/000/0"]["ev"] == EVIDENCE
    assert got["0000/0"]["echo"] == {"asked": "Describe this image in detail.",
                                     "tokens": [[0, 1, -1.0], [1, 5, -6.0], [5, 10, -3.5]]}
    assert "echo" not in got["color/000/0"] and "qa" not in got["0000/0"]


def test_images_no_larger_than_a_thumbnail_are_linked_as_they_are(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name, size in (("small.png", (48, 32)), ("edge.png", (256, 200)), ("big.png", (257, 100))):
        Image.new("RGB", size, (10, 200, 30)).save(tmp_path / "imgs" / name)
    assert thumbnail(tmp_path, "imgs/small.png") == "imgs/small.png"
    assert thumbnail(tmp_path, "imgs/edge.png") == "imgs/edge.png"
    assert not (tmp_path / "thumbs").exists()  # nothing re-encoded
    rel = thumbnail(tmp_path, "imgs/big.png")
    with Image.open(tmp_path / rel) as thumb:
        assert rel.startswith("thumbs/") and thumb.size == (256, 100) and thumb.format == "JPEG"


def test_a_bomb_gets_no_thumbnail_and_is_never_decoded(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("decoded pixels")

    (tmp_path / "imgs").mkdir()
    for name, side in (("over_ours.png", 10000), ("over_pils.png", 20000)):  # 100 MP; 400 MP: PIL's error
        (tmp_path / "imgs" / name).write_bytes(png_with_header_size(side, side))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's warning for the 100 MP header
        assert thumbnail(tmp_path, "imgs/over_ours.png") is None
    assert thumbnail(tmp_path, "imgs/over_pils.png") is None
    assert not (tmp_path / "thumbs").exists()


def test_thumbnails_are_small_and_written_once(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (1024, 512), (10, 200, 30)).save(tmp_path / "imgs" / "a.png")
    rel = thumbnail(tmp_path, "imgs/a.png")
    assert rel is not None and rel.startswith("thumbs/")
    with Image.open(tmp_path / rel) as thumb:
        assert thumb.size == (256, 128) and thumb.format == "JPEG"
    stamp = (tmp_path / rel).stat().st_mtime_ns
    assert thumbnail(tmp_path, "imgs/a.png") == rel and (tmp_path / rel).stat().st_mtime_ns == stamp
    assert thumbnail(tmp_path, "imgs/missing.png") is None
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    assert thumbnail(tmp_path, "imgs/bad.png") is None


class FakeBench:
    name = "fake"

    def describe(self):
        return {"name": "fake"}


def test_the_page_holds_one_json_blob_and_no_card_markup(tmp_path):
    prompt = 'a sign saying "</script><script>alert(1)</script>"'
    rows = [{"id": f"{i:05d}/0", "group": f"{i:05d}", "prompt": prompt, "image": f"i{i}.png", "score": i % 2,
             "correct": bool(i % 2), "tag": "single_object", "error": None} for i in range(300)]
    frame = pd.DataFrame(rows)
    table = pd.DataFrame({"accuracy": [0.5]}, index=pd.Index(["single_object"], name="task"))
    page = html_report(FakeBench(), {"overall": 0.5}, table, frame)
    data = cards_in(page)
    assert len(data) == 300 and data[0]["prompt"] == prompt  # the prompt's "</script>" cannot end the blob
    assert page.count("<figure") == page.count('<figure class="chart"')  # charts only, no cards
    assert "<script>alert" not in page
    assert external_urls(page) == []  # nothing the page loads needs the network (SVG namespaces are names)


def test_write_outputs_writes_thumbnails_next_to_the_report(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64), (255, 0, 255)).save(tmp_path / "images" / "0.png")
    frame = pd.DataFrame([{"id": "0/0", "group": "0", "prompt": "p", "image": "images/0.png", "score": 1.0,
                           "error": None, "evidence": EVIDENCE}])
    table = pd.DataFrame({"score": [1.0]}, index=pd.Index(["0"], name="prompt"))
    write_outputs(tmp_path, FakeBench(), {"score": 1.0}, table, frame)
    card = cards_in((tmp_path / "report.html").read_text())[0]
    assert (tmp_path / card["thumb"]).is_file() and card["img"] == "images/0.png"
    assert pd.read_parquet(tmp_path / "samples.parquet")["evidence"][0]["below"][0]["class"] == "cat"


def test_report_renders_an_evaluation_run_again_from_its_files(tmp_path, capsys):
    """``evalsuite report RUN`` on an ``evalsuite run`` folder: the same cards and table as the run wrote,
    thumbnails made again where missing; a folder that is neither kind of run is refused, naming both."""
    from evalsuite.cli import main

    (tmp_path / "images").mkdir()
    Image.new("RGB", (300, 300), (255, 0, 255)).save(tmp_path / "images" / "0.png")
    frame = pd.DataFrame([
        {"id": "0/0", "group": "0", "prompt": "a cat", "image": "images/0.png", "tag": "counting",
         "correct": False, "score": 0.0, "error": None, "reason": "include[0]: expected cat>=1, found 0",
         "evidence": EVIDENCE},
        {"id": "1/0", "group": "1", "prompt": "dpg", "image": "images/missing.png", "score": 0.5,
         "error": None, "questions": ["is there a cat?"], "answers": ["yes"], "final": [1.0]},
    ])
    table = pd.DataFrame({"accuracy": [0.25]}, index=pd.Index(["counting"], name="task"))
    write_outputs(tmp_path, FakeBench(), {"overall": 0.25}, table, frame)
    first = (tmp_path / "report.html").read_text()
    (tmp_path / "report.html").unlink()
    shutil.rmtree(tmp_path / "thumbs")
    assert main(["report", str(tmp_path)]) == 0
    again = (tmp_path / "report.html").read_text()
    assert cards_in(again) == cards_in(first)
    assert (tmp_path / cards_in(again)[0]["thumb"]).is_file()
    table_html = re.compile(r"<table.*?</table>", re.S)
    assert table_html.findall(again) == table_html.findall(first) and ">task<" in again
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "neither a training run folder (no metrics.csv" in err
    assert "no results.json and samples.jsonl" in err
