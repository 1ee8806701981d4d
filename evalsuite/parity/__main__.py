"""``python -m evalsuite.parity [--rows a,b] [--full]``: run parity rows, update docs/parity.{json,md}.

Exit status 1 when a row that ran does not match (over 1e-5 relative without a documented cause) or a
hand-worked rule case fails; rows whose official code cannot be installed or run are recorded with the exact
error and do not fail the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evalsuite.parity.envs import ENVS
from evalsuite.parity.models import MODEL_ROWS, PROBE_ROWS
from evalsuite.parity.reasons import REASON_ROWS
from evalsuite.parity.rules import RULE_ROWS, repo_root, run_rule_row
from evalsuite.parity.runner import RowResult, model_rows, run_model_row, run_probe_row, run_reason_row
from evalsuite.parity.table import load_results, render, save_results

ORDER = [*MODEL_ROWS, *PROBE_ROWS, *RULE_ROWS, *REASON_ROWS]


def command_for(name: str) -> str:
    full = " --full" if name in MODEL_ROWS and MODEL_ROWS[name].full else ""
    return f"python -m evalsuite.parity --rows {name}{full}"


def run_rule(name: str) -> RowResult:
    row = RULE_ROWS[name]
    cases = " ".join(row.tests) + (f" -k '{row.select}'" if row.select else "")
    result = RowResult(name, row.official, "not run", command_for(name),
                       weights=f"– (rule); hand-worked cases: `pytest {cases}`")
    root = repo_root()
    if root is None:
        result.error = "needs the source checkout's tests/ (not in an installed package)"
        return result
    passed, failed, skipped, failures = run_rule_row(row, root)
    result.passed, result.total, result.skipped = passed, passed + failed, skipped
    result.status = "match" if not failed and passed else "MISMATCH"
    result.error = f"failed: {', '.join(failures)}" if failures else ""
    if skipped:
        result.error = (result.error + f"; {skipped} skipped (data files absent)").lstrip("; ")
    return result


def write_page(docs: Path, results: dict) -> None:
    shims = {name: row.shims for name, row in MODEL_ROWS.items()}
    envs = {name: env.requirements for name, env in ENVS.items()}
    ci_rows = tuple(row.name for row in model_rows(None, full=False))  # what tests/test_parity.py reruns
    (docs / "parity.md").write_text(render(results, ORDER, shims, envs, ci_rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalsuite.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", help=f"comma-separated rows (default: all cheap rows); from {ORDER}")
    parser.add_argument("--full", action="store_true", help="also the full-size rows (minutes each on a CPU)")
    parser.add_argument("--docs", type=Path, default=None, help="folder of parity.json/.md (default: docs/)")
    parser.add_argument("--render", action="store_true", help="only rewrite parity.md from parity.json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()] if args.rows else None
    unknown = sorted(set(names or []) - set(ORDER))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {ORDER}")
    root = repo_root()
    docs = args.docs or ((root / "docs") if root else Path.cwd())
    docs.mkdir(parents=True, exist_ok=True)
    results = load_results(docs / "parity.json")
    if args.render:
        write_page(docs, results)
        return 0
    failed = []
    todo = [*(row.name for row in model_rows(names, args.full)),
            *(n for n in [*PROBE_ROWS, *RULE_ROWS, *REASON_ROWS] if names is None or n in names)]
    for name in todo:
        print(f"parity: {name} ...", file=sys.stderr, flush=True)
        if name in RULE_ROWS:
            result = run_rule(name)
        elif name in PROBE_ROWS:
            result = run_probe_row(PROBE_ROWS[name], command_for(name))
        elif name in REASON_ROWS:
            result = run_reason_row(REASON_ROWS[name], command_for(name))
        else:
            result = run_model_row(MODEL_ROWS[name], command_for(name))
        results[name] = result.to_json()
        line = f"parity: {name}: {result.status}"
        if result.max_rel is not None:
            line += f" (max abs {result.max_abs:.2e}, max rel {result.max_rel:.2e})"
        if result.total is not None:
            line += f" ({result.passed}/{result.total})"
        print(line + (f" — {result.error}" if result.error else ""), file=sys.stderr, flush=True)
        if result.status == "MISMATCH":
            failed.append(name)
        save_results(docs / "parity.json", results, ORDER)
        write_page(docs, results)
    if failed:
        print(f"parity: rows that stopped matching: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
