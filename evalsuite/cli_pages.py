"""The ``evalsuite`` commands that write the static pages: ``compare RUN_A RUN_B`` (no judge, no reward),
``report DIR`` (a training or an evaluation run folder) and the training page ``train`` writes at the end
of a run."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def compare_page(args: argparse.Namespace) -> int:
    """``evalsuite compare RUN_A RUN_B``: the comparison page of two runs' own scores."""
    from evalsuite.compare import compare_runs
    from evalsuite.compare_page import write_compare_page

    cmp = compare_runs(args.run_a, args.run_b)
    a, b = Path(args.run_a), Path(args.run_b)
    out = Path(args.out or a.resolve().with_name(f"compare-{a.resolve().stem}-vs-{b.resolve().stem}"))
    page = write_compare_page(cmp, out)
    for d in cmp.deltas:
        ci = "" if d.ci is None else f"  95% CI [{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]"
        print(f"{d.metric} {d.task}: A {d.mean_a:.4f} B {d.mean_b:.4f} delta {d.delta:+.4f}{ci} "
              f"({d.prompts} prompts)")
    print(f"comparison page: {page}")
    return 0


def train_out_dir(args: argparse.Namespace) -> Path | None:
    """The run folder a recipe trains into: ``--out-dir``, else the last ``--set out_dir=``, else the
    recipe's ``out_dir`` (None when none names it: the trainer's default is its own business)."""
    import yaml

    if args.out_dir:
        return Path(args.out_dir)
    named = [o.partition("=")[2] for o in args.set or [] if o.partition("=")[0].strip() == "out_dir"]
    if named:
        return Path(yaml.safe_load(named[-1]))
    try:
        data = yaml.safe_load(Path(args.config).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return Path(data["out_dir"]) if isinstance(data, dict) and data.get("out_dir") else None


def training_page(args: argparse.Namespace) -> None:
    """After ``evalsuite train``: ``report.html`` of its folder once it logged a step, written by rank 0
    only under ``accelerate launch``. Failing to write it is a warning: it must not turn a finished
    training run into a failed command."""
    out_dir = train_out_dir(args)
    if int(os.environ.get("RANK", 0)) != 0 or out_dir is None or not (out_dir / "metrics.csv").is_file():
        return
    from evalsuite.training_report import render_training_report

    try:
        print(f"training report: {render_training_report(out_dir)}")
    except Exception as e:  # the page is a by-product of the run
        logging.getLogger("evalsuite").warning("could not write %s/report.html: %s", out_dir, e)


def cmd_report(args: argparse.Namespace) -> int:
    """``evalsuite report DIR``: the page of a training folder (metrics.csv) or of an evaluation run
    (results.json + samples.jsonl), rendered again from its files."""
    from evalsuite.errors import ConfigError
    from evalsuite.report import is_run_folder, rerender_report
    from evalsuite.training_report import render_training_report

    run_dir = Path(args.run_dir)
    if (run_dir / "metrics.csv").is_file():
        print(f"training report: {render_training_report(run_dir)}")
    elif is_run_folder(run_dir):
        print(f"report: {rerender_report(run_dir)}")
    else:
        raise ConfigError(f"{run_dir}: neither a training run folder (no metrics.csv; `evalsuite train` "
                          "writes one after its first step) nor an evaluation run (no results.json and "
                          "samples.jsonl; `evalsuite run` writes them)")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.html of a training run folder (finished or running: "
                                      "curves and logged image grids) or again of an evaluation run folder")
    p.add_argument("run_dir", help="the folder `evalsuite train` writes (metrics.csv, manifest.json, …) or "
                                   "one `evalsuite run` wrote (results.json, samples.jsonl)")
    p.set_defaults(func=cmd_report)
