"""Our GRPO rewriter trainer vs TRL's GRPOTrainer at two sizes: the tiny Qwen2 (harness overhead dominates)
and a ~24M-parameter Qwen2 with 64-token completions (the forward's arithmetic dominates). Same model,
prompts, reward, G, completions per step, max tokens, temperature, LoRA, lr, beta and micro-batch on both
sides (see trl_compare). Each side runs in its own process, so its peak RSS is its own; seconds per step are
the median step time with set-up and the first step excluded. Built only with ``--benchmark-enable``;
numbers land in ``extra_info`` and one printed line per case (no timing asserts: the build machine is
shared, read the ratio). The medium cases take 2-4 minutes each on 2 CPU cores.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.benchmarks.trl_compare import SIZES, write_medium
from tests.test_accelerate import REPO

STEPS = {"tiny": 30, "medium": 5}  # step times measured: STEPS - 2 (the first step warms up)
SIDES = {"tiny": ("ours", "trl", "trl-gc"), "medium": ("ours", "trl")}


def _side(which: str, case: str, lm, out, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "tests.benchmarks.trl_compare", which, case, str(lm), str(out), str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def medium_lm(tiny_dir, tmp_path_factory):
    return write_medium(tiny_dir / "qwen2-lm", tmp_path_factory.mktemp("medium-lm"))


@pytest.mark.parametrize("case", list(SIZES))
def test_bench_ours_vs_trl(benchmark, case, tiny_dir, tmp_path, request):
    if benchmark.disabled:
        pytest.skip("subprocess training runs: only with --benchmark-enable")
    size = SIZES[case]["model"]
    lm = tiny_dir / "qwen2-lm" if size == "tiny" else request.getfixturevalue("medium_lm")

    def run_all() -> dict:
        return {w: _side(w, case, lm, tmp_path / w, STEPS[size]) for w in SIDES[size]}

    res = benchmark.pedantic(run_all, rounds=1, iterations=1)
    ours = res["ours"]
    info = {"case": case}
    for w, r in res.items():
        info[f"{w}_s_per_step"] = r["s_per_step"]
        info[f"{w}_peak_rss_mb"] = r["peak_rss_mb"]
        info[f"{w}_completion_tokens"] = r["completion_tokens"]
        if w != "ours":
            info[f"throughput_vs_{w}"] = r["s_per_step"] / ours["s_per_step"]
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info))
    # Same work on both sides: the random models stop early about equally often.
    for r in res.values():
        assert r["s_per_step"] > 0 and r["gaps"] == STEPS[size] - 2
        assert abs(r["completion_tokens"] - ours["completion_tokens"]) <= 0.1 * SIZES[case]["new_tokens"]
