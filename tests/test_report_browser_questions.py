"""Questions on the cards, as headless Chromium renders them (no network): T2I-CompBench's BLIP-VQA
noun-phrase questions with their P(yes), DenseAlignBench's PromptEcho companion (what the VLM was asked, the
caption shaded token by token), and a DPG-size report (4,260 images) paging to its last card."""

from __future__ import annotations

import math
import re
import shutil

import pandas as pd
from PIL import Image

from evalsuite.report import cards_in, write_outputs
from tests.browser import needs_chromium, rendered_dom, screenshot

pytestmark = needs_chromium


class FakeBench:
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self):
        return {"name": self.name}


def _images(out, names, size):
    """One PNG written once and copied to every name (a 4,260-image run in seconds)."""
    (out / "images").mkdir(parents=True)
    first = out / "images" / names[0]
    Image.new("RGB", size, (255, 0, 255)).save(first)
    for name in names[1:]:
        shutil.copyfile(first, out / "images" / name)


def test_blip_vqa_questions_and_the_echo_caption_render(tmp_path):
    _images(tmp_path, ["0.png", "1.png"], (48, 48))
    frame = pd.DataFrame([
        # as T2I-CompBench writes a colour sample: the BLIP scorer's details under its "blip_" prefix
        {"id": "color/000/0", "group": "color/000", "prompt": "a green bench and a blue bowl",
         "image": "images/0.png", "category": "color", "score": 0.105, "error": None, "blip_score": 0.105,
         "blip_questions": ["a green bench?", "a blue bowl?"], "blip_p_yes": [0.12, 0.875],
         "blip_n_questions": 2},
        # as DenseAlignBench writes a sample: its PromptEcho companion's details under "promptecho."
        {"id": "0000/0", "group": "0000", "prompt": "a red cube", "image": "images/1.png", "score": -1.7,
         "error": None, "promptecho": -1.7, "promptecho.query": "Describe this image in detail.",
         "promptecho.n_caption_tokens": 3,
         "promptecho.caption_tokens": [[0, 1, -0.1], [1, 5, round(math.log(0.01), 4)], [5, 10, -0.5]]},
    ])
    table = pd.DataFrame({"score": [0.105]}, index=pd.Index(["color"], name="category"))
    write_outputs(tmp_path, FakeBench("t2i_compbench"), {"color": 0.105}, table, frame)
    dom = rendered_dom(tmp_path / "report.html", tmp_path)
    # each noun-phrase question with its P(yes); passed at >= 0.5 as everywhere on the cards
    assert '<summary>2 questions, 1 passed</summary>' in dom
    assert '<li class="no">a green bench? → 0.12</li><li class="yes">a blue bowl? → 0.875</li>' in dom
    # the echo: what was asked, the least expected tokens first, each token a span with its probability
    assert ("<summary>asked “Describe this image in detail.”; least expected: “red” p 0.01, “cube” p 0.607, "
            "“a” p 0.905</summary>") in dom
    spans = re.findall(r'<span title="p ([\d.]+) \(log [-\d.]+\)"[^>]*>([^<]*)</span>', dom)
    assert spans == [("0.905", "a"), ("0.01", " red"), ("0.607", " cube")]
    screenshot(tmp_path / "report.html", tmp_path / "questions.png", width=1000, height=1100)


def dpg_run(out, n: int):
    """``n`` 320 px images (so each gets a thumbnail), three DPG questions per card, every 3rd wrong twice."""
    names = [f"{i:05d}.png" for i in range(n)]
    _images(out, names, (320, 320))
    rows = []
    for i, name in enumerate(names):
        final = [1.0, 0.0, 0.0] if i % 3 == 0 else [1.0, 1.0, 1.0]
        rows.append({"id": f"{i // 4:04d}/{i % 4}", "group": f"{i // 4:04d}", "prompt": f"dense prompt {i}",
                     "image": f"images/{name}", "category": ("entity", "attribute", "relation")[i % 3],
                     "score": sum(final) / 3, "error": None,
                     "questions": [f"is there a thing {i}?", "is it red?", "is it on a table?"],
                     "answers": ["yes", "no", "no"] if i % 3 == 0 else ["yes"] * 3,
                     "raw": [a == 1.0 for a in final], "final": final})
    frame = pd.DataFrame(rows)
    table = frame.groupby("category")["score"].mean().to_frame("score")
    write_outputs(out, FakeBench("dpg_bench"), {"overall": float(frame["score"].mean())}, table, frame)


def test_a_dpg_size_report_renders_its_first_and_last_page(tmp_path):
    """4,260 images: one JSON blob, 60 cards a page, lazy thumbnails, questions on every card."""
    dpg_run(tmp_path, 4260)
    page = tmp_path / "report.html"
    assert len(cards_in(page.read_text())) == 4260
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 4260
    for fragment, first, last in (("", 1, 60), ("page=70", 4201, 4260)):
        dom = rendered_dom(page, tmp_path, fragment)
        ids = re.findall(r'<figure class="card [^"]*" data-id="([^"]+)"', dom)
        assert ids == [f"{(i - 1) // 4:04d}/{(i - 1) % 4}" for i in range(first, last + 1)]
        assert f"{first}–{last} of 4260 (4260 images)" in dom
        assert len(re.findall(r'<img loading="lazy" src="thumbs/\w+\.jpg"', dom)) == 60
        assert dom.count("<summary>3 questions, ") == 60
        assert dom.count("<summary>3 questions, 1 passed</summary>") == 20  # every 3rd sample
    assert '<li class="no">is it on a table? → no</li>' in dom
    screenshot(page, tmp_path / "dpg-last.png", fragment="page=70")
