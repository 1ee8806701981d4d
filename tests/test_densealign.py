"""DenseAlignBench: prompts, the pure rules (outcome, swap, stats, position-bias tests) checked by hand and
against scipy, compare_runs (unswapping, failures, resume after an interrupt, layouts, refusals), and end
to end: two tiny-FLUX runs made by evaluate() on real captions, compared with a fake HTTP judge and with
the local Qwen2.5-VL judge on tiny weights."""

from __future__ import annotations

import json
import math
import threading

import pytest
from PIL import Image, ImageStat

from evalsuite import ConfigError, DiffusersGenerator, Sample, UnknownNameError
from evalsuite.benchmarks.densealign import DenseAlignBench, prompt_id
from evalsuite.benchmarks.densealign_compare import LOG_NAME, compare_runs, load_run, pair_id
from evalsuite.benchmarks.densealign_rules import (
    binomial_two_sided_p,
    chi2_independence,
    net_ci_bootstrap,
    net_ci_normal,
    outcome_of,
    pairwise_stats,
    position_bias,
    swap_for,
)
from evalsuite.evaluate import evaluate
from evalsuite.report import cards_in
from evalsuite.rewards.judge_local import LocalQwenJudge
from evalsuite.rewards.judges import OpenAIJudge
from evalsuite.scorer import Judgement, PairJudge
from evalsuite.store import JsonlLog
from tests.test_judges import FakeChatServer, decode_images, status, verdict

N = 40


# -- fake runs and scripted judges -------------------------------------------------------------------
def red(i: int, run: str) -> int:
    """Red level of image i in run a / b: a mix of a-better, b-better and equal (tie) pairs."""
    return (i * 37) % 256 if run == "a" else (i * 91) % 256


def make_run(root, name, n=N, *, skip=(), captions=None, score=None):
    """A folder shaped like evaluate() output: samples.jsonl + images/<id>.png."""
    run = root / name
    rows = []
    for i in range(n):
        rid = prompt_id(i)
        if i not in skip:
            (run / "images").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (red(i, name[-1]), 0, 0)).save(run / "images" / f"{rid}.png")
        rows.append({"id": f"{rid}/0", "group": rid, "prompt": (captions or {}).get(i, f"caption {i}"),
                     "seed": 0, "image": f"images/{rid}.png", "score": score(i) if score else None})
    JsonlLog(run / "samples.jsonl").append(rows)
    return run


class ScriptedJudge(PairJudge):
    """Answers from a function of (caption, first image, second image); counts calls per caption."""

    max_concurrency = 4

    def __init__(self, answer, name="scripted"):
        self.answer, self.name = answer, name
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def judge(self, caption, image_a, image_b):
        out = self.answer(caption, image_a, image_b)
        with self.lock:
            self.calls[caption] = self.calls.get(caption, 0) + 1
        return out if isinstance(out, Judgement) else Judgement(out)

    def describe(self):
        return {"judge": self.name}


def redder(caption, a, b):
    ra, rb = a.getpixel((0, 0))[0], b.getpixel((0, 0))[0]
    return "image_a" if ra > rb else "image_b" if rb > ra else "tie"


class Interrupting(ScriptedJudge):
    """A ScriptedJudge that raises KeyboardInterrupt (as Ctrl-C would) once ``after`` calls have started."""

    def __init__(self, answer, after, name="scripted"):
        super().__init__(answer, name)
        self.after, self.started = after, 0

    def judge(self, caption, image_a, image_b):
        with self.lock:
            self.started += 1
            stop = self.started > self.after
        if stop:
            raise KeyboardInterrupt
        return super().judge(caption, image_a, image_b)


@pytest.fixture
def runs(tmp_path):
    return make_run(tmp_path, "run_a"), make_run(tmp_path, "run_b")


def expected_outcome(i: int) -> str:
    ra, rb = red(i, "a"), red(i, "b")
    return "win" if ra > rb else "loss" if rb > ra else "tie"


# -- prompts and layout ----------------------------------------------------------------------------
def test_prompts_are_the_2000_captions(data_dir):
    bench = DenseAlignBench(companion=None)
    records = bench.prompts(data_dir)
    lines = (data_dir / "densealignbench" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == 2000 and bench.images_per_prompt == 1
    assert [r.id for r in records[:3]] == ["0000", "0001", "0002"] and records[-1].id == "1999"
    assert records[0].prompt == json.loads(lines[0])["caption"] and records[1999].metadata == {"index": 1999}
    assert len({r.prompt for r in records}) == 2000


def test_image_path_and_official_metadata(tmp_path, data_dir):
    bench = DenseAlignBench(companion=None)
    assert bench.image_path(Sample("0005/0", "p")) == "images/0005.png"
    assert bench.image_path(Sample("0005/1", "p")) == "images/0005_1.png"
    records = bench.prompts(data_dir)[:3]
    bench.write_layout(tmp_path, records)
    rows = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert rows[2] == {"data_id": "0002", "index": 2, "caption": records[2].prompt,
                       "filename": "images/0002.png"}
    run = load_run(tmp_path)  # an official-layout folder is readable as a run
    assert sorted(run) == ["0000/0", "0001/0", "0002/0"] and run["0001/0"].prompt == records[1].prompt


# -- pure rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pref", "swapped", "expected"), [
    ("image_a", False, "win"), ("image_b", False, "loss"),  # A shown first
    ("image_a", True, "loss"), ("image_b", True, "win"),  # B shown first: the first image is run B's
    ("tie", False, "tie"), ("tie", True, "tie"), (None, False, "failed"), (None, True, "failed"),
])
def test_outcome_unswaps(pref, swapped, expected):
    assert outcome_of(pref, swapped) == expected


def test_stats_by_hand():
    outcomes = ["win"] * 6 + ["loss"] * 3 + ["tie"] + ["failed"] * 2
    s = pairwise_stats(outcomes)
    assert (s["win"], s["loss"], s["tie"], s["failed"], s["n_judged"], s["n_pairs"]) == (6, 3, 1, 2, 10, 12)
    # rates over the 10 judged pairs; failures are not ties
    assert (s["win_rate"], s["loss_rate"], s["tie_rate"], s["net_pp"]) == pytest.approx((60, 30, 10, 30))
    # Wald: v = .6 + .3 - .3^2 = .81, se = sqrt(.81/10) = .284605, half = 1.959964 * 28.4605 = 55.7816
    assert s["net_ci"] == pytest.approx([30 - 55.7816, 30 + 55.7816], abs=1e-3)
    assert s["failed_rate"] == pytest.approx(100 * 2 / 12)
    # v = .9 + .05 - .85^2 = .2275, half = 1.959964 * 100 * sqrt(.2275/100) = 9.3484
    assert net_ci_normal(90, 5, 5) == pytest.approx((85 - 9.3484, 85 + 9.3484), abs=1e-3)
    assert net_ci_normal(10, 0, 0) == (100.0, 100.0)  # no spread, clipped to [-100, 100]


def test_bootstrap_ci_is_seeded_and_close_to_normal():
    a = net_ci_bootstrap(120, 70, 10, seed=5)
    assert a == net_ci_bootstrap(120, 70, 10, seed=5) and a != net_ci_bootstrap(120, 70, 10, seed=6)
    lo, hi = net_ci_normal(120, 70, 10)
    assert a[0] < 25 < a[1] and abs(a[0] - lo) < 2.5 and abs(a[1] - hi) < 2.5
    s = pairwise_stats(["win"] * 120 + ["loss"] * 70 + ["tie"] * 10, ci="bootstrap", seed=5)
    assert s["net_ci"] == list(a) and s["ci_method"] == "bootstrap"


def test_stats_edge_cases():
    s = pairwise_stats(["failed"] * 3)
    assert s["n_judged"] == 0 and s["failed"] == 3 and s["win_rate"] is None and s["net_ci"] is None
    with pytest.raises(ValueError):
        pairwise_stats(["victory"])
    with pytest.raises(ConfigError):
        pairwise_stats(["win"], ci="jackknife")


def test_binomial_by_hand_and_against_scipy():
    from scipy.stats import binomtest

    assert binomial_two_sided_p(9, 10) == 22 / 1024  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert binomial_two_sided_p(10, 10) == 2 / 1024
    assert binomial_two_sided_p(5, 10) == 1.0 and binomial_two_sided_p(0, 0) == 1.0
    for k, n in [(37, 100), (1100, 2000), (0, 7), (13, 13), (480, 1000)]:
        assert binomial_two_sided_p(k, n) == pytest.approx(binomtest(k, n).pvalue, rel=1e-9)


def test_chi_square_by_hand_and_against_scipy():
    from scipy.stats import chi2_contingency

    # 2x2 (tie column empty -> dropped), Yates: E = [[5.263, 4.737], [4.737, 4.263]], |O-E| - .5 = 4.237
    chi2, dof, p = chi2_independence([[10, 0, 0], [0, 9, 0]])
    assert dof == 1 and chi2 == pytest.approx(4.2368**2 * (1 / 5.2632 + 2 / 4.7368 + 1 / 4.2632), rel=1e-3)
    assert p == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    tables = ([[5, 3, 2], [2, 6, 1]], [[40, 30, 5], [33, 41, 9]], [[4, 4, 0], [6, 1, 0]],
              [[3, 0, 1], [2, 0, 5]])
    for table in tables:
        cols = [j for j in range(3) if table[0][j] + table[1][j]]
        ref = chi2_contingency([[row[j] for j in cols] for row in table])
        chi2, dof, p = chi2_independence(table)
        assert (chi2, dof, p) == pytest.approx((ref.statistic, ref.dof, ref.pvalue), rel=1e-9)
    assert chi2_independence([[3, 0, 0], [4, 0, 0]]) is None  # one outcome only: untestable
    assert chi2_independence([[3, 1, 0], [0, 0, 0]]) is None  # one order only


def test_position_bias_of_a_first_image_judge():
    swaps = [i % 3 == 0 for i in range(30)]  # 10 swapped, 20 not
    bias = position_bias([(s, "image_a") for s in swaps])
    assert bias["first_shown_rate"] == 100 and bias["n_decisive"] == 30
    assert bias["binomial_p"] == 2 / 2**30 and bias["chi2_p"] < 1e-5
    assert bias["table"] == {"not_swapped": {"win": 20, "loss": 0, "tie": 0},
                             "swapped": {"win": 0, "loss": 10, "tie": 0}}
    assert (bias["win_rate_not_swapped"], bias["win_rate_swapped"]) == (100, 0)
    assert bias["interpretation"].startswith("significant")
    fair = position_bias([(s, "image_b" if s else "image_a") for s in swaps])  # always run A
    assert fair["first_shown_rate"] == pytest.approx(200 / 3) and fair["chi2_p"] is None
    assert position_bias([(s, "tie") for s in swaps])["interpretation"].startswith("not testable")


def test_swaps_are_seeded_per_pair():
    ids = [pair_id(str(i)) for i in range(2000)]
    swaps = [swap_for(0, p) for p in ids]
    assert 1000 - 100 < sum(swaps) < 1000 + 100  # p = 0.5 (±4.5 sigma)
    assert [swap_for(0, p) for p in reversed(ids[:50])] == swaps[:50][::-1]  # order and subset free
    assert swaps != [swap_for(1, p) for p in ids]
    assert not any(swap_for(0, p, 0.0) for p in ids[:100]) and all(swap_for(0, p, 1.0) for p in ids[:100])
    assert pair_id("7") == pair_id("0007") == "0007/0" and pair_id("x", 2) == "x/2"


# -- compare_runs ------------------------------------------------------------------------------------
def test_first_image_judge_wins_exactly_when_not_swapped(runs, tmp_path):
    res = compare_runs(*runs, ScriptedJudge(lambda c, a, b: "image_a"), tmp_path / "cmp", seed=11)
    shown_first = [not swap_for(11, pair_id(str(i))) for i in range(N)]
    r = res.results
    assert r["stats"]["win"] == sum(shown_first) and r["stats"]["loss"] == N - sum(shown_first)
    assert r["win_rate"] == pytest.approx(100 * sum(shown_first) / N)  # = 100 - swap rate
    bias = r["position_bias"]
    assert bias["first_shown_rate"] == 100 and bias["binomial_p"] < 1e-10 and bias["chi2_p"] < 1e-6
    assert "significant position bias" in res.markdown
    for rec in res.records:
        assert rec["swapped"] == swap_for(11, rec["pair_id"])
        assert rec["image_first"] == f"{rec['shown_first']}:images/{rec['pair_id'][:4]}.png"


def test_unswapping_recovers_the_true_winner(runs, tmp_path):
    res = compare_runs(*runs, ScriptedJudge(redder), tmp_path / "cmp", seed=0)
    got = {r["pair_id"]: r["outcome"] for r in res.records}
    assert got == {pair_id(str(i)): expected_outcome(i) for i in range(N)}
    want = [expected_outcome(i) for i in range(N)]
    s = res.results["stats"]
    counts = tuple(want.count(k) for k in ("win", "loss", "tie", "failed"))
    assert (s["win"], s["loss"], s["tie"], s["failed"]) == counts
    assert s["tie"] > 0 and s["win"] > 0 and s["loss"] > 0
    assert res.results["net_pp"] == pytest.approx(100 * (s["win"] - s["loss"]) / N)
    for name in ("results.json", "summary.md", "manifest.json", LOG_NAME):
        assert (tmp_path / "cmp" / name).is_file()
    on_disk = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert on_disk["stats"] == s and on_disk["complete"] is True
    assert (tmp_path / "cmp" / "summary.md").read_text() == res.markdown and "run_a vs run_b" in res.markdown


def test_failures_are_counted_never_ties_and_retried_later(runs, tmp_path):
    def flaky(caption, a, b):
        i = int(caption.split()[-1])
        if i % 7 == 0:
            raise RuntimeError("judge bug")  # an exception fails this pair only
        if i % 5 == 0:
            return Judgement(None, error="gave up after 3 attempts", attempts=3)
        return redder(caption, a, b)

    out = tmp_path / "cmp"
    bad = {i for i in range(N) if i % 7 == 0 or i % 5 == 0}
    res = compare_runs(*runs, ScriptedJudge(flaky), out, seed=0)
    s = res.results["stats"]
    assert s["failed"] == len(bad) and s["n_judged"] == N - len(bad)
    good = [expected_outcome(i) for i in range(N) if i not in bad]
    assert s["tie"] == good.count("tie") and s["win"] == good.count("win")  # failures did not become ties
    assert s["win_rate"] == pytest.approx(100 * good.count("win") / len(good))
    assert res.results["complete"] is False and len(res.results["failures"]) == len(bad)
    errors = {f["error"] for f in res.results["failures"]}
    assert errors == {"RuntimeError: judge bug", "gave up after 3 attempts"}

    keep = ScriptedJudge(redder)
    compare_runs(*runs, keep, out, seed=0, retry_failed=False)
    assert keep.calls == {}
    again = ScriptedJudge(redder)
    res2 = compare_runs(*runs, again, out, seed=0)
    assert sorted(int(c.split()[-1]) for c in again.calls) == sorted(bad) and set(again.calls.values()) == {1}
    assert res2.results["stats"]["failed"] == 0 and res2.results["complete"] is True


def test_http_judge_that_always_fails_gives_failed_pairs(tmp_path):
    a, b = make_run(tmp_path, "run_a", 5), make_run(tmp_path, "run_b", 5)
    server = FakeChatServer(lambda body: status(500, "down"))
    try:
        judge = OpenAIJudge(server.url, "m", max_retries=1, backoff=0.0, timeout=5)
        res = compare_runs(a, b, judge, tmp_path / "cmp", seed=0)
    finally:
        server.close()
    s = res.results["stats"]
    assert (s["failed"], s["tie"], s["n_judged"], s["tie_rate"]) == (5, 0, 0, None)
    assert len(server.requests) == 10 and all(r["attempts"] == 2 for r in res.records)
    assert all("HTTP 500" in r["error"] and len(r["errors"]) == 2 for r in res.records)


def test_resume_after_interrupt_judges_each_pair_once(runs, tmp_path):
    ref = compare_runs(*runs, ScriptedJudge(redder), tmp_path / "ref", seed=3)
    out = tmp_path / "cmp"
    first = Interrupting(redder, after=7)
    with pytest.raises(KeyboardInterrupt):
        compare_runs(*runs, first, out, seed=3, workers=3)
    logged = [r["pair_id"] for r in JsonlLog(out / LOG_NAME)]
    assert 7 <= len(logged) < N and len(set(logged)) == len(logged)
    assert len(logged) == sum(first.calls.values())  # every verdict that came back was kept
    assert not (out / "results.json").exists()

    second = ScriptedJudge(redder)
    res = compare_runs(*runs, second, out, seed=3, workers=3)
    judged_twice = set(first.calls) & set(second.calls)
    assert not judged_twice and sum(second.calls.values()) == N - len(logged)
    final = [r["pair_id"] for r in JsonlLog(out / LOG_NAME)]
    assert len(final) == N and len(set(final)) == N
    for key in ("stats", "position_bias", "net_ci", "complete"):
        assert res.results[key] == ref.results[key]
    third = ScriptedJudge(redder)
    compare_runs(*runs, third, out, seed=3)  # nothing left to judge
    assert third.calls == {}


def test_worker_pool_is_bounded_and_used(runs, tmp_path):
    import time

    active, peak, lock = [0], [0], threading.Lock()

    def slow(caption, a, b):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return "bogus" if caption.endswith("9") else redder(caption, a, b)

    res = compare_runs(*runs, ScriptedJudge(slow), tmp_path / "cmp", seed=0, workers=3, limit=20)
    assert 1 < peak[0] <= 3 and len(res.records) == 20
    bogus = [r for r in res.records if r["pair_id"] in ("0009/0", "0019/0")]
    assert all(r["outcome"] == "failed" and "not a Judgement" in r["error"] for r in bogus)


def test_limit_is_a_reproducible_subset(runs, tmp_path):
    full = compare_runs(*runs, ScriptedJudge(lambda c, a, b: "image_a"), tmp_path / "full", seed=2)
    part = compare_runs(*runs, ScriptedJudge(lambda c, a, b: "image_a"), tmp_path / "part", seed=2, limit=10)
    assert [r["pair_id"] for r in part.records] == [pair_id(str(i)) for i in range(10)]
    assert [r["swapped"] for r in part.records] == [r["swapped"] for r in full.records[:10]]


def test_missing_images_and_official_layout(tmp_path):
    a = make_run(tmp_path, "run_a", 6)
    b = make_run(tmp_path, "run_b", 6, skip={2})
    official = tmp_path / "official_b"  # the authors' layout: data_id without padding, any filename
    (official / "pics").mkdir(parents=True)
    lines = []
    for i in range(1, 5):
        Image.new("RGB", (8, 8), (red(i, "b"), 0, 0)).save(official / "pics" / f"{i}.png")
        lines.append(json.dumps({"data_id": str(i), "caption": f"caption {i}", "filename": f"pics/{i}.png"}))
    (official / "metadata.jsonl").write_text("\n".join(lines) + "\n")

    res = compare_runs(a, b, ScriptedJudge(redder), tmp_path / "cmp", seed=0)
    assert res.results["pairs"]["missing_images"] == 1 and res.results["missing"] == ["0002/0"]
    assert res.results["stats"]["n_pairs"] == 5 and res.results["complete"] is False
    res = compare_runs(a, official, ScriptedJudge(redder), tmp_path / "cmp2", seed=0)
    assert [r["pair_id"] for r in res.records] == ["0001/0", "0002/0", "0003/0", "0004/0"]
    assert res.results["pairs"]["only_in_a"] == 2
    assert [r["outcome"] for r in res.records] == [expected_outcome(i) for i in range(1, 5)]


def test_refusals(runs, tmp_path):
    a, b = runs
    judge = ScriptedJudge(redder)
    compare_runs(a, b, judge, tmp_path / "cmp", seed=0, limit=2)
    with pytest.raises(ConfigError, match="different comparison"):
        compare_runs(a, b, judge, tmp_path / "cmp", seed=1, limit=2)
    with pytest.raises(ConfigError, match="different comparison"):
        compare_runs(a, b, ScriptedJudge(redder, name="other"), tmp_path / "cmp", seed=0, limit=2)
    with pytest.raises(ConfigError, match="own"):
        compare_runs(a, b, judge, a, seed=0)
    other = make_run(tmp_path, "run_c", 3, captions={1: "something else"})
    with pytest.raises(ConfigError, match="different prompts"):
        compare_runs(a, other, judge, tmp_path / "cmp3")
    with pytest.raises(ConfigError, match="not a run"):
        compare_runs(a, tmp_path / "nothing", judge, tmp_path / "cmp4")


def test_companion_scores_are_compared(tmp_path):
    a = make_run(tmp_path, "run_a", 4, score=lambda i: -1.0 + 0.1 * i)
    b = make_run(tmp_path, "run_b", 4, score=lambda i: -1.2 + 0.2 * i)
    comp = compare_runs(a, b, ScriptedJudge(redder), tmp_path / "cmp").results["companion"]
    # a: -1, -.9, -.8, -.7 (mean -.85); b: -1.2, -1, -.8, -.6 (mean -.9); a higher on pairs 0 and 1
    assert comp["n"] == 4 and comp["mean_a"] == pytest.approx(-0.85) and comp["mean_b"] == pytest.approx(-0.9)
    assert comp["mean_diff"] == pytest.approx(0.05) and comp["a_higher_rate"] == 50.0


# -- the companion metric ----------------------------------------------------------------------------
def test_companion_is_optional_and_injectable():
    from evalsuite.rewards.brightness import Brightness

    samples = [Sample(f"000{i}/0", "p", image=Image.new("RGB", (8, 8), (v, v, v)))
               for i, v in enumerate((0, 255))]
    off = DenseAlignBench(companion=None)
    assert off.describe()["companion"] is None
    recs = off.score(samples)
    assert all(r["score"] is None and "pairwise" in r["reason"] for r in recs)
    bench = DenseAlignBench(companion=Brightness())
    recs = bench.score(samples)
    assert [r["score"] for r in recs] == pytest.approx([0.0, 1.0])
    assert recs[1]["brightness"] == recs[1]["score"] and recs[1]["brightness.luma"] == pytest.approx(1.0)
    import pandas as pd

    table = bench.aggregate(pd.DataFrame(recs))
    assert table.loc["densealignbench", "brightness"] == pytest.approx(0.5)
    assert bench.summary(table, None) == {"n_images": 2, "brightness": 0.5, "n_scored": 2}
    assert bench.describe()["companion"] == "brightness" and bench.describe()["companion_backend"]
    with pytest.raises(UnknownNameError):
        DenseAlignBench(companion="no-such-reward")


def test_auto_companion_uses_promptecho_when_present():
    pytest.importorskip("evalsuite.rewards.promptecho")
    bench = DenseAlignBench(device="cpu")  # builds the reward, loads no weights
    assert bench.describe()["companion"] == "promptecho"
    assert bench.describe()["companion_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"


# -- end to end: evaluate() twice with tiny FLUX, then compare -----------------------------------------
@pytest.fixture(scope="module")
def flux_runs(tiny_dir, data_dir, tmp_path_factory):
    from evalsuite.rewards.promptecho import PromptEcho

    gen = DiffusersGenerator.from_pretrained(str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2,
                                             height=64, width=64)
    root = tmp_path_factory.mktemp("densealign")
    echo = PromptEcho(str(tiny_dir / "qwen2.5-vl"), max_pixels=64 * 64)
    made = {}
    for name, seed in (("base", 0), ("tuned", 1)):
        made[name] = evaluate(DenseAlignBench(companion=echo), root / name, generator=gen, limit=3, seed=seed,
                              data_dir=data_dir, gen_batch_size=3)
    return root, made


def test_e2e_runs_have_official_layout_and_companion(flux_runs, data_dir):
    root, made = flux_runs
    captions = [r.prompt for r in DenseAlignBench(companion=None).prompts(data_dir)[:3]]
    for name, res in made.items():
        names = sorted(p.name for p in (root / name / "images").iterdir())
        assert names == ["0000.png", "0001.png", "0002.png"]
        meta = [json.loads(x) for x in (root / name / "metadata.jsonl").read_text().splitlines()]
        assert [m["caption"] for m in meta] == captions
        assert math.isfinite(res.summary["promptecho"]) and res.summary["n_scored"] == 3
        assert res.per_sample["promptecho.n_caption_tokens"].gt(100).all()  # dense captions, untruncated
        # the report's cards: what the VLM was asked and how likely it found each token of the caption
        echoes = [c["echo"] for c in cards_in((root / name / "report.html").read_text())]
        assert [len(e["tokens"]) for e in echoes] == list(res.per_sample["promptecho.n_caption_tokens"])
        assert all(e["asked"] == "Describe this image in detail." for e in echoes)


def test_e2e_compare_with_http_judge(flux_runs, tmp_path):
    root, made = flux_runs

    def brighter(body):  # a deterministic "judge": prefers the brighter image
        first, second = (ImageStat.Stat(im.convert("L")).mean[0] for im in decode_images(body))
        return verdict("image_a" if first > second else "image_b" if second > first else "tie", "brightness")

    server = FakeChatServer(brighter)
    try:
        judge = OpenAIJudge(server.url, "fake-gemini", max_retries=1, backoff=0.0, timeout=10)
        res = compare_runs(root / "tuned", root / "base", judge, tmp_path / "cmp", seed=0, workers=2)
    finally:
        server.close()
    assert len(server.requests) == 3
    for rec in res.records:
        i = rec["pair_id"][:4]
        lum = {n: ImageStat.Stat(Image.open(root / n / "images" / f"{i}.png").convert("L")).mean[0]
               for n in ("tuned", "base")}
        want = "win" if lum["tuned"] > lum["base"] else "loss" if lum["base"] > lum["tuned"] else "tie"
        assert rec["outcome"] == want and rec["reasoning"] == "brightness"
    r = res.results
    assert r["run_a"]["name"] == "tuned" and r["judge"]["model"] == "fake-gemini"
    assert r["pairs"]["compared"] == 3
    assert r["companion"]["mean_a"] == pytest.approx(made["tuned"].summary["promptecho"])
    assert r["companion"]["mean_b"] == pytest.approx(made["base"].summary["promptecho"])


def test_e2e_compare_with_local_qwen_judge(flux_runs, tiny_dir, tmp_path):
    root, _ = flux_runs
    qwen = str(tiny_dir / "qwen2.5-vl")
    scored = compare_runs(root / "tuned", root / "base", LocalQwenJudge(qwen, mode="score", dtype="float32",
                                                                       max_pixels=64 * 64),
                          tmp_path / "score", seed=0)
    assert scored.results["stats"]["n_judged"] == 3 and scored.results["stats"]["failed"] == 0
    for rec in scored.records:
        lp = rec["details"]["label_logprobs"]
        assert rec["outcome"] == outcome_of(max(lp, key=lp.get), rec["swapped"])
    # random tiny weights do not write JSON when generating: failed verdicts, never ties
    gen = compare_runs(root / "tuned", root / "base", LocalQwenJudge(qwen, dtype="float32", max_new_tokens=6,
                                                                    max_pixels=64 * 64),
                       tmp_path / "generate", seed=0)
    s = gen.results["stats"]
    assert (s["failed"], s["tie"], s["n_judged"]) == (3, 0, 0)
    assert all(r["raw"] is not None and "AnswerParseError" in r["error"] for r in gen.records)
