"""Headless Chromium for the page tests: a screenshot of a page as a person sees it, and the DOM the browser
built from it (what rendered, not what was written). Pages open from file:// with the network disabled."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Debian's chromium is not installed (.ci/run installs it)")
# No network at all: any http(s) resource the page asked for would fail to load (and show in the shot).
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--allow-file-access-from-files",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]


def _run(page: Path, profile: Path, *extra: str, fragment: str = "") -> subprocess.CompletedProcess:
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    cmd = [CHROMIUM, *OFFLINE, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def screenshot(page: Path, shot: Path, *, width: int = 1300, height: int = 1600,
               fragment: str = "") -> np.ndarray:
    """Render ``page`` (at ``#fragment``: a report's view state) into ``shot`` (PNG); its RGB pixels."""
    proc = _run(page, shot.parent / f".profile-{shot.stem}", f"--window-size={width},{height}",
                f"--screenshot={shot}", fragment=fragment)
    assert shot.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def rendered_dom(page: Path, tmp: Path, fragment: str = "") -> str:
    """The document as Chromium serialises it after loading ``page`` (at ``#fragment``)."""
    proc = _run(page, tmp / ".profile-dom", "--virtual-time-budget=2000", "--dump-dom", fragment=fragment)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


class _Charts(HTMLParser):
    """``data-chart`` name → number of drawn marks (paths, rects, uses) inside that chart's ``<svg>``."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, int] = {}
        self.current: str | None = None
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and "data-chart" in a:
            self.current, self.depth = a["data-chart"], 0
            self.marks[self.current] = 0
        elif self.current is not None:
            if tag == "figure":
                self.depth += 1
            if tag in ("path", "rect", "use", "polyline"):
                self.marks[self.current] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.current is not None:
            if self.depth == 0:
                self.current = None
            else:
                self.depth -= 1


def charts_in(dom: str) -> dict[str, int]:
    """Every chart of a rendered page with how many SVG marks it drew."""
    parser = _Charts()
    parser.feed(dom)
    return parser.marks


def external_urls(dom: str) -> list[str]:
    """src/href values that would need the network."""
    return re.findall(r'(?:src|href)=["\'](https?://[^"\']+)', dom)


def colour_pixels(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int(np.all(np.abs(pixels - np.array(rgb)) < tol, axis=-1).sum())
