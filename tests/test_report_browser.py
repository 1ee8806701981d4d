"""The HTML report as a person sees it: headless Chromium renders it (screenshots, and the DOM after the
page's script ran) with no network. Screenshots stay in the test's tmp dir for a person to look at."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from evalsuite import GenerationRequest, Generator
from evalsuite.evaluate import evaluate
from evalsuite.report import write_outputs
from tests.toy_benchmark import ToyBenchmark

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAGENTA = (255, 0, 255)
KEPT_GREEN, FAILED_RED = (0x22, 0xDD, 0x55), (0xFF, 0x3B, 0x3B)  # report.js: kept / kept in a failed clause
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Debian's chromium is not installed (.ci/run installs it)")


class SolidGenerator(Generator):
    name = "solid"

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        return [Image.new("RGB", (48, 48), MAGENTA) for _ in requests]


def chromium(tmp_path, url: str, *, shot=None, size="1200,1400") -> str:
    """Load ``url``; return the DOM after the page's script ran, or save a screenshot to ``shot``."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", f"--window-size={size}",
           "--allow-file-access-from-files", f"--screenshot={shot}" if shot else "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if shot:
        assert shot.is_file(), proc.stderr[-2000:]
    else:
        assert "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def near(pixels, rgb, tol=40):
    return np.all(np.abs(pixels - np.array(rgb)) < tol, axis=-1)


def test_report_renders_the_image_grid(tmp_path):
    evaluate(ToyBenchmark(), tmp_path, generator=SolidGenerator(), limit=3, images_per_prompt=2)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, (tmp_path / "report.html").as_uri(), shot=shot)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    magenta = (pixels[..., 0] > 230) & (pixels[..., 1] < 30) & (pixels[..., 2] > 230)
    # six 220 px cards (thumbnails scaled up by the report's CSS) -> far more than one image's worth
    assert magenta.sum() > 4 * 200 * 200, f"grid images not visible ({magenta.sum()} magenta pixels)"
    rows = np.where(magenta.any(axis=1))[0]
    assert rows.max() - rows.min() > 300, "expected the cards to wrap onto a second row"
    green, red = near(pixels, (0x88, 0xCC, 0x88), 12), near(pixels, (0xDD, 0x66, 0x66), 12)
    assert green.sum() + red.sum() > 500, "card borders (pass/fail) missing"
    assert not (tmp_path / "thumbs").exists()  # 48 px images are their own thumbnails (no JPEG artefacts)


# -- a synthetic GenEval run: images with known objects, evidence as the reward records it ----------------
TAGS = ("single_object", "two_object", "counting", "colors")


class FakeGenEval:
    name = "geneval"

    def describe(self):
        return {"name": "geneval"}


def geneval_run(out, n: int):
    """``n`` 64x64 images, a blue "dog" square in each; every 4th image is judged correct; the others fail
    "found 0" on a cat the detector saw at 0.27 (drawn dimmed)."""
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (64, 64), (235, 235, 235))
        ImageDraw.Draw(img).rectangle([30, 8, 56, 40], fill=(40, 60, 200))
        img.save(out / "images" / f"{i:05d}.png")
        ok = i % 4 == 0
        evidence = {"size": [64, 64], "threshold": 0.3,
                    "kept": [{"class": "dog", "box": [30.0, 8.0, 57.0, 41.0], "score": 0.91,
                              "clauses": ["include[0]"], "failed": [] if ok else ["include[0]"],
                              "mask": {"w": 3, "h": 3, "bits": "111111110"}}],  # pooled, as recorded
                    "below": [] if ok else [{"class": "cat", "box": [4.0, 30.0, 24.0, 60.0], "score": 0.27}]}
        rows.append({"id": f"{i:05d}/0", "group": f"{i:05d}", "prompt": f"prompt {i}",
                     "image": f"images/{i:05d}.png", "tag": TAGS[i % len(TAGS)], "correct": ok,
                     "score": float(ok), "reason": None if ok else "include[1]: expected cat>=1, found 0",
                     "error": None, "evidence": evidence})
    frame = pd.DataFrame(rows)
    table = frame.groupby("tag")["correct"].mean().to_frame("accuracy")
    write_outputs(out, FakeGenEval(), {"overall": float(frame["correct"].mean())}, table, frame)
    return frame


def test_overlay_draws_kept_and_dimmed_detections_when_toggled(tmp_path):
    geneval_run(tmp_path, 4)
    url = (tmp_path / "report.html").as_uri()
    off, on, one = tmp_path / "overlay-off.png", tmp_path / "overlay-on.png", tmp_path / "overlay-one.png"
    chromium(tmp_path, url, shot=off)
    chromium(tmp_path, url + "#overlay=1", shot=on)
    chromium(tmp_path, url + "#overlay=00001/0", shot=one)  # one image toggled, as its "why" button does
    px = {k: np.asarray(Image.open(p).convert("RGB")).astype(int) for k, p in (("off", off), ("on", on),
                                                                               ("one", one))}
    green = {k: near(v, KEPT_GREEN, 30).sum() for k, v in px.items()}
    red = {k: near(v, FAILED_RED, 30).sum() for k, v in px.items()}
    assert green["off"] == 0 and red["off"] == 0, "overlays must start hidden"
    assert green["on"] > 200, "the correct image's kept dog box is not drawn"
    assert red["on"] > 3 * 200, "the failed images' dog boxes are not drawn"
    assert red["one"] > 200 and red["one"] < red["on"] / 2 and green["one"] == 0
    dom = chromium(tmp_path, url + "#overlay=00001/0")
    assert dom.count('class="card fail show-ev"') == 1 and 'aria-pressed="true"' in dom
    assert "cat 0.27 &lt; 0.3" in dom  # the dimmed candidate's label, in the overlay and the caption


def test_filters_and_sort_in_the_dom(tmp_path):
    frame = geneval_run(tmp_path, 40)
    url = (tmp_path / "report.html").as_uri()
    dom = chromium(tmp_path, url + "#status=fail&task=counting")
    expected = int(((frame["tag"] == "counting") & ~frame["correct"]).sum())  # 10 counting, all failed
    assert expected == 10
    assert re.search(r'id="grid"[^>]*data-matching="(\d+)"', dom).group(1) == str(expected)
    assert dom.count('<figure class="card fail') == expected and dom.count('class="card ok') == 0
    dom = chromium(tmp_path, url + "#status=ok&sort=-score&min=0.5")
    ids = re.findall(r'data-id="([^"]+)"', dom)
    assert ids == [f"{i:05d}/0" for i in range(0, 40, 4)]  # ties in score keep id order
    dom = chromium(tmp_path, url + "#kind=count&q=prompt%2039")
    assert re.findall(r'data-id="([^"]+)"', dom) == ["00039/0"]


def test_a_full_geneval_run_renders_one_page_of_cards(tmp_path):
    """2,212 images: one JSON blob, 60 cards in the DOM; 64 px images, so no thumbnails to make."""
    geneval_run(tmp_path, 2212)
    assert not (tmp_path / "thumbs").exists()
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure") == page.count('<figure class="chart"')  # charts only, no card markup
    dom = chromium(tmp_path, (tmp_path / "report.html").as_uri() + "#page=36")
    assert re.search(r'data-matching="(\d+)"', dom).group(1) == "2212"
    cards_shown = dom.count("<figure") - dom.count('<figure class="chart"')
    assert cards_shown == 52 and "2161–2212 of 2212" in dom  # the last page
    assert dom.count('loading="lazy"') == 52 and dom.count('src="images/') == 52
    shot = tmp_path / "full-run.png"
    chromium(tmp_path, (tmp_path / "report.html").as_uri() + "#status=fail&overlay=1", shot=shot)


def test_ocr_edit_and_questions_render(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), MAGENTA).save(tmp_path / "images" / "0.png")
    frame = pd.DataFrame([
        {"id": "sign/0", "group": "sign", "prompt": 'a sign "OPEN"', "image": "images/0.png", "score": 0.75,
         "error": None, "ocr.target": "OPEN", "ocr.recognized": "0PEN"},
        {"id": "dpg/0", "group": "dpg", "prompt": "a black cat", "image": "images/0.png", "score": 0.5,
         "error": None, "questions": ["is there a cat?", "is the cat black?"], "answers": ["yes", "no"],
         "final": [1.0, 0.0]},
    ])
    table = pd.DataFrame({"score": [0.6]}, index=pd.Index(["all"], name="task"))
    write_outputs(tmp_path, FakeGenEval(), {"score": 0.6}, table, frame)
    dom = chromium(tmp_path, (tmp_path / "report.html").as_uri())
    assert '<del>O</del><ins>0</ins>PEN' in dom
    assert '<li class="yes">is there a cat? → yes</li><li class="no">is the cat black? → no</li>' in dom
    chromium(tmp_path, (tmp_path / "report.html").as_uri(), shot=tmp_path / "ocr-qa.png", size="1000,1100")
