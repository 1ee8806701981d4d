"""``evalsuite`` command line: a thin layer over the Python API (each command calls one function)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalsuite import cli_pages

# `evalsuite score`: the output is written, but some samples errored (a distinct code CI can gate on).
SCORE_ERRORS_EXIT = 3
# Commands that load diffusers pipelines outside DiffusersGenerator (-q must switch their bars off up front).
PIPELINE_COMMANDS = frozenset({"train"})


def _cmd_list(args: argparse.Namespace) -> int:
    from evalsuite.registry import registry, singular

    entries = registry.check()
    if args.kind:
        entries = [e for e in entries if e.kind == args.kind]
    rows = [
        {
            "kind": singular(e.kind),
            "name": e.name,
            "source": e.source,
            "license": _license_terms(e.kind, e.load()) if e.error is None else "",
            "target": e.target_name,
            "status": "ok" if e.error is None else f"broken: {e.error}",
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps({"entries": rows, "conflicts": registry.conflicts}, indent=2))
    else:
        head = {"kind": "KIND", "name": "NAME", "source": "SOURCE", "license": "LICENSE/TERMS"}
        widths = {k: max([len(h)] + [len(str(r[k])) for r in rows]) for k, h in head.items()}
        print("  ".join(head[k].ljust(widths[k]) for k in widths) + "  STATUS")
        for r in rows:
            print("  ".join(str(r[k]).ljust(widths[k]) for k in widths) + "  " + r["status"])
        for c in registry.conflicts:
            print(f"warning: {c}", file=sys.stderr)
    return 0


def _license_terms(kind: str, obj: Any) -> str:
    """A registered thing's own ``license`` (a reward's weights), else a benchmark's data-file licenses."""
    from evalsuite.data_files import BY_KEY, terms

    own = getattr(obj, "license", None)
    if isinstance(own, str) and own:
        return terms([own])
    keys = getattr(obj, "data_files", ()) or () if kind == "benchmarks" else ()
    return terms(BY_KEY[k].license for k in keys if k in BY_KEY)


def _cmd_tiny(args: argparse.Namespace) -> int:
    from evalsuite.tiny import TINY_MODELS, write_tiny

    names = args.only.split(",") if args.only else None
    written = write_tiny(args.out_dir, names=names, seed=args.seed)
    for name, path in written.items():
        print(f"{name:14s} {path}  (mimics {TINY_MODELS[name].model_id})")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from evalsuite import data

    if args.fetch:
        for spec in data.DATA_FILES:
            if spec.url:
                data.resolve(spec.key, args.data_dir)
    rows = data.status(args.data_dir)
    for r in rows:
        print(f"{r['status'][:8]:8s} {r['file']:55s} {r['license']}")
    return 0 if all(r["status"] == "ok" for r in rows) or not args.check else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from evalsuite.runner import parse_options, run

    same_name = ("output_dir", "lora", "revision", "images_per_prompt", "limit", "height", "width",
                 "rewriter", "steps", "guidance", "negative_prompt", "seed", "batch_size", "score_batch_size",
                 "data_dir", "device", "dtype", "protocol")
    pipeline_args = parse_options(args.pipeline_arg, "--pipeline-arg")
    result = run(args.bench, args.model, **{k: getattr(args, k) for k in same_name},
                 options=parse_options(args.option), pipeline_args=pipeline_args,
                 leaderboard=None if args.no_leaderboard else args.leaderboard)
    if result is not None:
        for key, value in result.summary.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        print(f"outputs: {result.out_dir}  (report: {result.out_dir / 'report.html'})")
    return 0


def _cmd_protocols(args: argparse.Namespace) -> int:
    from evalsuite.protocols import PROTOCOLS, describe_protocols

    records = [p.record() for p in PROTOCOLS.values()]
    print(json.dumps(records, indent=2) if args.json else describe_protocols())
    return 0


def _reward_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What ``score`` and ``compare --reward`` build their reward with: --device (default: the best one
    here), --dtype (default float32) and the --option values."""
    from evalsuite.runner import default_device, parse_options

    options = parse_options(args.option)
    return {"device": args.device or default_device(), "dtype": args.dtype or "float32", **options}


def _cmd_score(args: argparse.Namespace) -> int:
    from evalsuite import scoring
    from evalsuite.options import check_options
    from evalsuite.registry import get_reward, registry
    from evalsuite.runner import parse_options
    from evalsuite.store import JsonlLog

    names = scoring.reward_list(args.reward)
    if names is None:
        kwargs = _reward_kwargs(args)
        name = args.reward
        if "," in name or ":" in name:
            reward = get_reward("multi", weights=name, **kwargs)
        else:
            check_options(name, registry.get("rewards", name), parse_options(args.option))
            reward = get_reward(name, **kwargs)
        items = scoring.read_items(args.input)
        rows = scoring.score_items(reward, items, batch_size=args.batch_size)
        by_reward = {reward.name: rows}
    else:
        per_reward = scoring.split_reward_options(names, parse_options(args.option))
        for n in names:
            check_options(n, registry.get("rewards", n), per_reward[n])
        common = {k: v for k, v in _reward_kwargs(args).items() if k in ("device", "dtype")}
        factories = {n: functools.partial(get_reward, n, **{**common, **per_reward[n]}) for n in names}
        items = scoring.read_items(args.input)
        rows, by_reward = scoring.score_items_by_reward(factories, items, batch_size=args.batch_size)
    if args.output:
        out = Path(args.output)
        out.unlink(missing_ok=True)
        JsonlLog(out).append(rows)
    for name, reward_rows in by_reward.items():
        print(scoring.summary_line(name, reward_rows))
    for r in rows:
        if r["error"]:
            print(f"  error: {r['error']}", file=sys.stderr)
    bad = any(r["error"] for r in rows)
    return SCORE_ERRORS_EXIT if bad and not args.allow_errors else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from evalsuite.server import serve

    common = {
        k: v
        for k, v in {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size}.items()
        if v is not None
    }
    return serve(
        args.reward,
        args.host,
        args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout_s,
        reward_kwargs=args.reward_kwargs,
        common_kwargs=common,
    )


def _cmd_regress(args: argparse.Namespace) -> int:
    from evalsuite.regress import run_regress

    drifts, spec = run_regress(args.baseline, update=args.update, tiny_dir=args.tiny_dir, only=args.reward)
    names = [n for n in spec["rewards"] if not args.reward or n in args.reward]
    if args.update:
        print(f"updated {args.baseline}: {', '.join(names)}")
        return 0
    for d in drifts:
        print(f"DRIFT {d.reward}:", file=sys.stderr)
        print("\n".join(d.lines), file=sys.stderr)
    ok = [n for n in names if n not in {d.reward for d in drifts}]
    print(f"regress: {len(ok)} rewards match the baseline ({', '.join(ok) or 'none'}), {len(drifts)} drifted")
    return 1 if drifts else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from evalsuite.demo import NOTICE, run_demo

    result = run_demo(args.out_dir, per_task=args.per_task, images_per_prompt=args.images_per_prompt)
    print(result.table.to_string())
    for key in ("overall", "correct_images", "correct_prompts"):
        print(f"{key}: {result.summary[key]:.4f}")
    print(f"report: {result.out_dir / 'report.html'}")
    print(f"NOTE: {NOTICE}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.judge is None and args.reward is None:
        return cli_pages.compare_page(args)
    if args.judge is not None and args.reward is not None:
        print("evalsuite compare: give at most one of --judge (DenseAlignBench) or --reward", file=sys.stderr)
        return 2
    if args.reward:
        from evalsuite.registry import get_reward
        from evalsuite.scoring import compare_with_reward
        from evalsuite.store import atomic_write_json

        reward = get_reward(args.reward, **_reward_kwargs(args))
        res = compare_with_reward(args.run_a, args.run_b, reward)
        if args.out:
            atomic_write_json(Path(args.out) / "results.json", res)
        print(
            f"{args.reward}: A {res['mean_a']:.6f} vs B {res['mean_b']:.6f} "
            f"(diff {res['mean_diff']:+.6f}); A wins {100 * res['win']:.1f}% / "
            f"loses {100 * res['loss']:.1f}% / ties {100 * res['tie']:.1f}% of {res['compared']} pairs "
            f"({res['skipped']} not comparable)"
        )
        return 0
    from evalsuite.registry import get_scorer, registry

    if args.judge == "local":
        opts = {"device": args.device, "dtype": args.dtype, "mode": args.mode}
    else:
        opts = {"temperature": args.temperature, "timeout": args.timeout, "max_retries": args.max_retries}
    opts = {k: v for k, v in opts.items() if v is not None}
    judge = get_scorer("judge", args.judge, model=args.model, **opts)
    a, b = Path(args.run_a), Path(args.run_b)
    out = args.out or str(a.with_name(f"compare-{a.name}-vs-{b.name}"))
    res = registry.get("benchmarks", "densealignbench").compare_runs(
        args.run_a, args.run_b, judge, out, seed=args.seed, workers=args.workers, limit=args.limit, ci=args.ci
    )
    print(res.markdown)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Runs the registered trainer named by ``--trainer``, else the one that takes the recipe."""
    import yaml

    from evalsuite.errors import ConfigError
    from evalsuite.registry import get_trainer, registry

    if args.trainer:
        trainer = get_trainer(args.trainer)
    else:
        try:
            data = yaml.safe_load(Path(args.config).read_text())
        except (OSError, yaml.YAMLError):
            data = None  # the trainer reports the problem with its own message
        claiming = [t for t in (get_trainer(n) for n in registry.names("trainers")) if t.claims(data)]
        if len(claiming) > 1:
            names = ", ".join(t.name for t in claiming)
            raise ConfigError(f"{args.config}: several registered trainers take this recipe ({names}); "
                              "name one with --trainer")
        # none: the rewriter trainer reads it and says what is wrong with it (unknown keys, bad YAML)
        trainer = claiming[0] if claiming else get_trainer("rewriter")

    argv = ["--config", args.config, *[x for o in args.set or [] for x in ("--set", o)]]
    if args.out_dir:
        argv += ["--out-dir", args.out_dir]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.no_resume:
        argv.append("--no-resume")
    code = trainer.run(argv)
    cli_pages.training_page(args)
    return code


def registry_kinds() -> tuple[str, ...]:
    from evalsuite.registry import KINDS

    return KINDS


def build_parser() -> argparse.ArgumentParser:
    from evalsuite import __version__

    parser = argparse.ArgumentParser(
        prog="evalsuite",
        description="Rewards, benchmarks and GRPO training for text-to-image models. "
        "Start offline with `evalsuite demo ./demo`.",
    )
    parser.add_argument("--version", action="version", version=f"evalsuite {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="everything registered (rewards, benchmarks, trainers, flow families, …) "
                                    "with source and license")
    p.add_argument("--kind", choices=list(registry_kinds()))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("tiny", help="write tiny offline checkpoints (same from_pretrained code as real ids)")
    p.add_argument("out_dir")
    p.add_argument("--only", help="comma-separated names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny)

    p = sub.add_parser("data", help="status of the upstream benchmark files (--fetch downloads them)")
    p.add_argument("--data-dir", help="directory with local copies (else EVALSUITE_DATA_DIR)")
    p.add_argument("--fetch", action="store_true", help="download and verify every missing file")
    p.add_argument("--check", action="store_true", help="exit 1 unless every file is present and verified")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("run", help="generate and score a benchmark (or score existing images)")
    p.add_argument("--bench", required=True, help="benchmark name (see `evalsuite list`)")
    p.add_argument(
        "--model",
        required=True,
        help="diffusers pipeline id or folder, or a folder of existing images (score only)",
    )
    p.add_argument("--lora", help="LoRA weights (folder or file) loaded into the pipeline")
    p.add_argument(
        "--rewriter",
        help="a trained prompt rewriter (evalsuite train output) or an instruct LM; images are "
        "rendered from its rewrites and scored against the original prompts",
    )
    p.add_argument("--revision", help="hub revision of --model")
    p.add_argument("--images-per-prompt", type=int, help="default: the benchmark's official number")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=float, help="guidance scale (FLUX: distilled guidance)")
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int,
                   help="base seed (default: the protocol's, else 0); each (prompt, image) derives its own")
    p.add_argument("--protocol", help="a pinned generation preset (`evalsuite protocols`); a flag that "
                   "contradicts it is an error")
    p.add_argument("--batch-size", type=int, default=4, help="generation batch size")
    p.add_argument("--score-batch-size", type=int, default=16)
    p.add_argument("--data-dir", help="local copies of the benchmark files (else EVALSUITE_DATA_DIR / cache)")
    p.add_argument(
        "--output-dir", help="run directory (default runs/<bench>-<model>-s<seed>); rerun to resume"
    )
    p.add_argument("--device", help="default: cuda:<LOCAL_RANK> if available, else cpu")
    p.add_argument("--dtype", help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="benchmark option, repeatable (e.g. --option mode=strict --option threshold=0.4 for geneval; "
        "a wrong key lists the benchmark's options)",
    )
    p.add_argument("--pipeline-arg", action="append", metavar="KEY=VALUE", help="extra argument of the "
                   "pipeline's __call__, repeatable (e.g. cfg_normalization=true, Z-Image); in the manifest")
    p.add_argument("--leaderboard", default="leaderboards", help="leaderboard directory to add this run to")
    p.add_argument("--no-leaderboard", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("protocols", help="the pinned generation presets of `run --protocol`, with sources")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_protocols)

    p = sub.add_parser(
        "score",
        help="score images (a run directory or a JSONL listing) with one or more rewards",
        description="Score images with a reward. Exit status: 0 when every sample was scored (or is not "
        f"applicable), {SCORE_ERRORS_EXIT} when any sample errored (--output still holds every good row and "
        "every error row; --allow-errors makes that 0), 1 on a usage or setup error.",
    )
    p.add_argument("input", help="run directory (samples.jsonl) or JSONL of {image, prompt, metadata}")
    p.add_argument(
        "--reward", required=True,
        help="reward name; NAME,NAME,... for a column per reward in one pass (each model loaded once); "
        "a set (drawbench: the DiffusionNFT/Flow-GRPO paper rewards); or NAME:WEIGHT,... for a weighted sum",
    )
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reward option, repeatable; with several rewards NAME.KEY=VALUE sets one reward's")
    p.add_argument("--output", help="write per-image scores to this JSONL file")
    p.add_argument(
        "--allow-errors", action="store_true",
        help=f"exit 0 even when samples errored (else {SCORE_ERRORS_EXIT})",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("serve", help="serve rewards over HTTP (loopback by default; PNG + JSON, no pickle)")
    p.add_argument("--reward", required=True, help="NAME[,NAME]")
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address; anything but loopback has no authentication"
    )
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-batch", type=int, default=64, help="most samples merged into one reward call")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to merge"
    )
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--read-timeout-s", type=float, default=5.0,
                   help="a request body that stalls this long gets 408; idle connections close after it")
    p.add_argument(
        "--reward-kwargs",
        type=json.loads,
        help='JSON per reward, e.g. {"multi": {"weights": "pickscore:1,ocr:0.5"}}',
    )
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("regress", help="recompute pinned reward scores; fail on drift beyond tolerance")
    p.add_argument("--baseline", required=True, help="baseline JSON (rewards, kwargs, tolerances, scores)")
    p.add_argument("--update", action="store_true", help="rewrite the baseline's scores from this build")
    p.add_argument("--tiny-dir", help="tiny checkpoints for {tiny} in the baseline (written if missing)")
    p.add_argument("--reward", action="append", help="only these rewards (repeatable)")
    p.set_defaults(func=_cmd_regress)

    p = sub.add_parser("demo", help="offline GenEval pass on tiny checkpoints (generation, scoring, report)")
    p.add_argument("out_dir")
    p.add_argument("--per-task", type=int, default=2, help="prompts per GenEval task")
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("compare", help="compare two runs: a page of per-task deltas (95%% CI) and the "
                       "prompts where they disagree; or a DenseAlignBench VLM judge, or a reward pairwise")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--judge", help="OpenAI-compatible base URL, or 'local' (Qwen2.5-VL via transformers)")
    p.add_argument("--model", help="judge model (API model name, or local Qwen2.5-VL id/folder)")
    p.add_argument("--reward", help="instead of a judge: score both runs with this reward and compare")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="reward option (with --reward)")
    p.add_argument(
        "-o", "--out", help="output directory (default: compare-A-vs-B next to RUN_A; judged pairs are "
        "stored as they complete, rerun to resume)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the A/B order swaps (recorded)")
    p.add_argument("--workers", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--timeout", type=float)
    p.add_argument("--max-retries", type=int)
    p.add_argument("--ci", choices=["normal", "bootstrap"], default="normal")
    p.add_argument("--mode", choices=["generate", "score"], help="local judge: free answer or constrained")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("train", help="GRPO training from a YAML recipe (harness/recipes/*.yaml); resumable")
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--out-dir")
    p.add_argument("--steps", type=int)
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--trainer", help="a registered trainer (evalsuite list --kind trainers); default: the "
                                     "one that takes the recipe (flow recipes: flow, else rewriter)")
    p.set_defaults(func=_cmd_train)

    cli_pages.add_report_parser(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party libraries stay at WARNING (open_clip and transformers are chatty at INFO).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("evalsuite").setLevel(
        logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    )
    if args.quiet:
        from evalsuite.quiet import silence_progress_bars

        silence_progress_bars(load_libraries=args.command in PIPELINE_COMMANDS)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        from evalsuite.errors import EvalsuiteError

        if isinstance(e, EvalsuiteError) and not args.verbose:
            print(f"evalsuite {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
