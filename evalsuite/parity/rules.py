"""The rule rows: a benchmark rule has no weights to share, so its parity is the number of hand-worked cases
of the official rule (tests written from the official source, each expected value worked out by hand) it
passes. They are run here with pytest from the source checkout and counted from pytest's JUnit report."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RULE_ROWS", "RuleRow", "count_junit", "repo_root"]


@dataclass(frozen=True)
class RuleRow:
    name: str
    official: str
    tests: tuple[str, ...]  # pytest paths, relative to the repository root
    select: str = ""  # pytest -k expression picking the hand-worked cases


RULE_ROWS: dict[str, RuleRow] = {
    row.name: row
    for row in (
        RuleRow("geneval-rules", "GenEval `evaluation/evaluate_images.py` (`evaluate`, thresholds, position, "
                "colour), Flow-GRPO's strict/partial modes", ("tests/test_geneval_rules.py",)),
        RuleRow("dpg-rules", "DPG-Bench `compute_dpg_bench.py` (question graph, parent zeroing, "
                "yes-matching, score modes)", ("tests/test_dpg_bench.py",),
                "graph or zeroing or yes_matching or hand_computed or first_row or capitalised or grids"),
        RuleRow("t2i-compbench-rules", "T2I-CompBench UniDet spatial / numeracy / 3-in-1 scripts",
                ("tests/test_t2i_compbench.py",), "by_hand"),
        RuleRow("ocr-edit-distance", "Flow-GRPO `ocr.py` (quoted target, normalisation, Levenshtein, "
                "`1 - dist/len` formula)", ("tests/test_reward_ocr.py",),
                "quoted_target or normalize or levenshtein or formula or one_wrong_letter or exact_render"),
    )
}


def repo_root() -> Path | None:
    """The source checkout holding ``tests/`` (rule rows need it; an installed wheel has none)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "tests" / "conftest.py").is_file() else None


def count_junit(report: Path) -> tuple[int, int, int, list[str]]:
    """``(passed, failed, skipped, failed test names)`` from a JUnit XML report."""
    passed = failed = skipped = 0
    failures = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = {child.tag for child in case}
        if "skipped" in outcome:
            skipped += 1
        elif outcome & {"failure", "error"}:
            failed += 1
            failures.append(case.get("name", "?"))
        else:
            passed += 1
    return passed, failed, skipped, failures


def run_rule_row(row: RuleRow, root: Path) -> tuple[int, int, int, list[str]]:
    """Run the row's hand-worked cases with pytest (the same interpreter) and count them."""
    with tempfile.TemporaryDirectory(prefix="parity-rules-") as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               *row.tests]
        if row.select:
            cmd += ["-k", row.select]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if not report.is_file():
            raise RuntimeError(f"pytest gave no report: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        return count_junit(report)
