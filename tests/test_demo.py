"""The README's offline quick start: ``evalsuite demo OUT`` runs a whole GenEval pass on tiny checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

from evalsuite.report import cards_in


def test_demo_command_runs_a_whole_benchmark_pass_offline(tmp_path):
    exe = Path(sys.executable).parent / "evalsuite"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "evalsuite.cli"]
    proc = subprocess.run([*cmd, "demo", str(tmp_path), "--per-task", "1", "--images-per-prompt", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "meaningless" in proc.stdout and "overall:" in proc.stdout
    assert "INFO root" not in proc.stderr  # third-party chatter stays quiet
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert set(results["table"]) == {"single_object", "two_object", "counting", "colors", "position",
                                     "color_attr"}
    assert results["n_images"] == 12 and len(cards_in((run / "report.html").read_text())) == 12
    assert json.loads((run / "manifest.json").read_text())["demo"]["notice"].startswith("tiny checkpoints")
    assert (tmp_path / "leaderboards" / "geneval.md").is_file()
    assert (run / "00000" / "metadata.jsonl").is_file() and (run / "00000" / "samples" / "0001.png").is_file()
