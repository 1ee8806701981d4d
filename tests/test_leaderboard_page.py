"""leaderboards/<bench>.html: a row per run (best first) linking to its report and manifest, what made the
number, and a chart per task; rendered next to the markdown by every `add_run`."""

from __future__ import annotations

import re
import shutil

import pytest
from PIL import Image

from evalsuite import GenerationRequest, Generator
from evalsuite.evaluate import evaluate
from evalsuite.leaderboard import add_run
from tests.browser import charts_in, external_urls, needs_chromium, rendered_dom, screenshot
from tests.toy_benchmark import ToyBenchmark


class TaggedToy(ToyBenchmark):
    """The toy benchmark with a headline number per tag, like GenEval's per-task summary."""

    def summary(self, table, per_sample):
        by_tag = per_sample.groupby(per_sample["metadata"].map(lambda m: m["tag"]))["score"].mean()
        return {"overall": float(per_sample["score"].mean()), **{k: float(v) for k, v in by_tag.items()},
                "errors": 0}


class Grey(Generator):
    name = "grey"

    def __init__(self, level: int) -> None:
        self.level = level

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        return [Image.new("RGB", (32, 32), (self.level,) * 3) for _ in requests]

    def describe(self):
        return {"name": self.name, "model": f"grey-{self.level}", "num_inference_steps": 28, "width": 32,
                "height": 32}


@pytest.fixture
def board(tmp_path):
    boards = tmp_path / "leaderboards"
    for level in (60, 200):
        run = tmp_path / "runs" / f"grey{level}"
        evaluate(TaggedToy(), run, generator=Grey(level), limit=4, images_per_prompt=1, seed=7)
        add_run(boards, run)
    return boards


def test_page_ranks_runs_and_links_each_to_its_report_and_manifest(board):
    page = (board / "toy.html").read_text()
    rows = re.findall(r"<tr><td class=\"text\">(\d)</td><td class=\"text\"><b>([^<]+)</b>", page)
    assert rows == [("1", "grey-200"), ("2", "grey-60")]  # brighter scores higher: best first
    assert "href='../runs/grey200/report.html'" in page and "href='../runs/grey60/manifest.json'" in page
    assert "seed 7" in page and "images/prompt 1" in page and "steps 28" in page and "size 32×32" in page
    assert set(charts_in(page)) == {"task-overall", "task-dark", "task-bright"}  # errors is a count
    assert (board / "toy.md").read_text().count("grey-") == 2  # the markdown is still written


def test_a_run_folder_that_has_gone_shows_as_such(board, tmp_path):
    from evalsuite.leaderboard import render

    shutil.rmtree(tmp_path / "runs" / "grey60")
    render(board, "toy")
    page = (board / "toy.html").read_text()
    assert "manifest missing" in page and "no report" in page and "../runs/grey200/report.html" in page


@needs_chromium
def test_page_in_chromium_shows_a_chart_per_task(board, tmp_path):
    page = board / "toy.html"
    dom = rendered_dom(page, tmp_path)
    charts = charts_in(dom)
    assert set(charts) == {"task-overall", "task-dark", "task-bright"}
    assert all(marks > 5 for marks in charts.values()), charts
    assert not external_urls(dom)
    pixels = screenshot(page, tmp_path / "leaderboard.png", height=1200)
    bars = (abs(pixels - [0x4C, 0x78, 0xA8]) < 12).all(axis=-1).sum()
    assert bars > 3 * 2 * 200, f"bars not drawn ({bars} pixels of the bar colour)"
