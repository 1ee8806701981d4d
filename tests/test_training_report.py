"""report.html of a training run folder: written by `evalsuite train` and `evalsuite report DIR`, read from
the folder's files (a real tiny Flow-GRPO run's, and hand-written ones for the rewriter trainer's columns)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evalsuite.cli import main
from evalsuite.errors import ConfigError
from evalsuite.training_report import read_metrics, render_training_report
from tests.browser import charts_in, colour_pixels, external_urls, needs_chromium, rendered_dom, screenshot

FLOW_CHARTS = {"train-reward", "train-kl", "train-clip", "train-ratio", "train-selftest", "train-eval",
               "train-loss"}


@pytest.fixture(scope="module")
def flow_run(tiny_dir, tmp_path_factory):
    """Four steps of tiny Flow-GRPO through `evalsuite train` (which writes report.html at the end)."""
    from evalsuite.harness.config import DataConfig, GRPOSettings, RewardSpec, save_config
    from tests.test_flow_train import make_config

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train-report")
    config = make_config(root / "run", tiny_dir, steps=4, log_images_every=2, eval_every=2,
                         eval_rewards=[RewardSpec("brightness")],
                         eval_data=DataConfig(prompts=["a blue house", "a green frog"]),
                         grpo=GRPOSettings(group_size=4, prompts_per_step=2, beta=0.01, clip_eps=0.2,
                                           micro_batch_size=8))
    config = replace(config, flow=replace(config.flow, sample_batch_size=8, train_batch_size=8))
    recipe = root / "recipe.yaml"
    save_config(config, recipe)
    assert main(["train", "--config", str(recipe)]) == 0
    return root / "run"


def test_train_command_writes_the_page_with_every_curve_and_grid(flow_run):
    page = (flow_run / "report.html").read_text()  # written by `evalsuite train`, no extra command
    for name in FLOW_CHARTS:
        assert f'data-chart="{name}"' in page, name
    assert "reward/brightness/mean" in page and "eval/brightness" in page and "flow/clip_fraction" in page
    assert "src='images/step_000002.png'" in page and "src='images/step_000004.png'" in page
    first = json.loads((flow_run / "samples.jsonl").read_text().splitlines()[0])
    row = f'{first["prompt"]}</td><td class="text"></td><td>{first["reward"]:.4f}'
    assert first["step"] == 2 and row in page  # the step's logged images, each with its reward
    assert "flow-grpo" in page and "href='manifest.json'" in page


def test_report_command_redraws_a_running_folder_with_a_torn_last_line(flow_run, tmp_path, capsys):
    import shutil

    running = tmp_path / "running"
    shutil.copytree(flow_run, running, ignore=shutil.ignore_patterns("checkpoints", "final"))
    text = (running / "metrics.csv").read_text()
    (running / "metrics.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) + 30])  # step 4 cut short
    (running / "report.html").unlink()
    assert main(["report", str(running)]) == 0
    assert str(running / "report.html") in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(running / "metrics.csv")] == [1.0, 2.0, 3.0]
    assert "3 steps logged" in (running / "report.html").read_text()


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def test_rewriter_trainer_columns_map_to_their_charts(tmp_path):
    """The prompt-rewriter trainer names its columns kl, clip_fraction, ratio_* (no flow/ prefix), and
    a column no chart takes (completions/tokens) only shows in the last-step table."""
    rows = [{"step": s, "lr": 1e-6, "loss": 0.1 / s, "policy_loss": 0.05, "kl": 0.01 * s,
             "clip_fraction": 0.1, "ratio_mean": 1.0, "ratio_min": 0.9, "ratio_max": 1.1,
             "selftest/max_abs_logp_diff": 0.0,
             "reward/mean": 0.2 * s, "reward/std": 0.1, "reward/pickscore/mean": 0.3 * s,
             "reward/ocr/mean": "nan", "completions/tokens": 40} for s in (1, 2, 3)]
    _write_csv(tmp_path / "metrics.csv", rows)
    page = render_training_report(tmp_path).read_text()
    charts = set(charts_in(page))
    assert charts == FLOW_CHARTS - {"train-eval"}, charts
    assert "reward/pickscore/mean" in page and "completions/tokens" in page
    assert "Logged images" not in page  # no grid logged yet


def test_a_folder_without_metrics_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a training run folder"):
        render_training_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 1
    assert "no metrics.csv" in capsys.readouterr().err


@needs_chromium
def test_page_in_chromium_shows_the_charts_and_the_grids(flow_run, tmp_path):
    page = flow_run / "report.html"
    dom = rendered_dom(page, tmp_path)
    charts = charts_in(dom)
    assert set(charts) == FLOW_CHARTS and all(marks > 10 for marks in charts.values()), charts
    assert dom.count("class=\"grid-step\"") == 2 and not external_urls(dom)
    pixels = screenshot(page, tmp_path / "training.png", height=3000)
    assert colour_pixels(pixels, (0x4C, 0x78, 0xA8), tol=20) > 500  # the curves (first palette colour)
