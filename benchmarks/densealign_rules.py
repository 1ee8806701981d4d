"""DenseAlignBench's rules as pure functions: the swap coin, outcomes, rates, net and its CI, position bias.

Protocol details, from the official ``dense_align_bench`` code (roooobotx/prompt_echo):

- The order shown to the judge is swapped with probability 0.5. Here the swap of a pair is a pure
  function of (seed, pair id), so any subset or a resumed run shows every pair exactly as a full run.
- A judgement that fails after its retries is dropped from the rates by the official script; here it is
  kept in the log, counted as ``failed`` and reported, but never counted as a tie. Rates are over the
  pairs with a verdict (win + loss + tie = 100 %).
- Position bias: the official script runs a chi-square test of independence between the shown order
  (swapped or not) and the outcome (A wins / B wins / tie) (scipy ``chi2_contingency``, Yates-corrected
  when it has one degree of freedom). We report it, plus the share of decisive verdicts that went to
  the image shown first with an exact two-sided binomial test against 50 % (valid for swap p = 0.5).

Confidence interval of net (documented choice): each judged pair scores x = +1 (win), −1 (loss) or 0
(tie), net = 100 · mean(x). ``ci="normal"`` (default) is the Wald interval net ± z·100·sqrt(v/n) with
v = p_win + p_loss − (p_win − p_loss)², the variance of x; ``ci="bootstrap"`` resamples the n outcomes
(drawn as one multinomial per replicate, which is the same distribution) with a seeded generator and
takes percentiles. Both are clipped to [−100, 100].
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from evalsuite.errors import ConfigError

OUTCOMES = ("win", "loss", "tie", "failed")


def swap_for(seed: int, pair_id: str, swap_prob: float = 0.5) -> bool:
    """Whether pair ``pair_id`` is shown B-first: a fixed coin per (seed, pair), independent of order."""
    digest = hashlib.sha256(f"densealign-swap\x00{seed}\x00{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < swap_prob


def outcome_of(preference: str | None, swapped: bool) -> str:
    """Run A's outcome from the judge's answer about the images as shown (A first unless swapped)."""
    if preference is None:
        return "failed"
    if preference == "tie":
        return "tie"
    if preference not in ("image_a", "image_b"):
        raise ValueError(f"unknown preference {preference!r}")
    first_won = preference == "image_a"
    return "win" if first_won != swapped else "loss"


def net_ci_normal(win: int, loss: int, tie: int, level: float = 0.95) -> tuple[float, float]:
    """Wald interval of net = 100·(p_win − p_loss), in percentage points (see module docstring)."""
    n = win + loss + tie
    if n == 0:
        return (math.nan, math.nan)
    pw, pl = win / n, loss / n
    var = pw + pl - (pw - pl) ** 2
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    half = 100.0 * z * math.sqrt(max(var, 0.0) / n)
    net = 100.0 * (pw - pl)
    return (max(-100.0, net - half), min(100.0, net + half))


def net_ci_bootstrap(
    win: int, loss: int, tie: int, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap of net (pp): n outcomes resampled with replacement = one multinomial draw."""
    import numpy as np

    n = win + loss + tie
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [win / n, loss / n, tie / n], size=n_boot)
    nets = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    lo, hi = np.quantile(nets, [0.5 - level / 2, 0.5 + level / 2])
    return (max(-100.0, float(lo)), min(100.0, float(hi)))


def pairwise_stats(
    outcomes: Iterable[str], *, ci: str = "normal", level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Counts, rates (% of judged pairs), net (pp) and its CI from per-pair outcomes of run A."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for o in outcomes:
        if o not in counts:
            raise ValueError(f"unknown outcome {o!r}; expected one of {OUTCOMES}")
        counts[o] += 1
    win, loss, tie, failed = (counts[k] for k in OUTCOMES)
    judged = win + loss + tie
    if ci == "normal":
        lo, hi = net_ci_normal(win, loss, tie, level)
    elif ci == "bootstrap":
        lo, hi = net_ci_bootstrap(win, loss, tie, level, n_boot, seed)
    else:
        raise ConfigError(f"ci must be 'normal' or 'bootstrap', got {ci!r}")

    def pct(k: int) -> float | None:
        return 100.0 * k / judged if judged else None

    return {
        "n_pairs": judged + failed,
        "n_judged": judged,
        "win": win,
        "loss": loss,
        "tie": tie,
        "failed": failed,
        "win_rate": pct(win),
        "loss_rate": pct(loss),
        "tie_rate": pct(tie),
        "net_pp": pct(win - loss) if judged else None,
        "net_ci": [lo, hi] if judged else None,
        "ci_method": ci,
        "ci_level": level,
        "failed_rate": 100.0 * failed / (judged + failed) if judged + failed else None,
    }


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials against p = 1/2."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got {k=}, {n=}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1))
    return min(1.0, 2 * tail / 2**n)


def chi2_independence(table: Sequence[Sequence[int]]) -> tuple[float, int, float] | None:
    """(chi2, dof, p) of a test of independence (as scipy's chi2_contingency: Yates-corrected at dof 1).

    All-zero columns are dropped (an outcome nobody got carries no information); None when a row is
    empty or fewer than two columns remain (the test is undefined).
    """
    cols = [j for j in range(len(table[0])) if any(row[j] for row in table)]
    obs = [[float(row[j]) for j in cols] for row in table]
    if len(cols) < 2 or any(sum(row) == 0 for row in obs):
        return None
    total = sum(map(sum, obs))
    row_sums = [sum(row) for row in obs]
    col_sums = [sum(row[j] for row in obs) for j in range(len(cols))]
    dof = (len(obs) - 1) * (len(cols) - 1)
    chi2 = 0.0
    for i, row in enumerate(obs):
        for j, o in enumerate(row):
            e = row_sums[i] * col_sums[j] / total
            d = abs(o - e)
            if dof == 1:
                d = max(0.0, d - 0.5)  # Yates: |O - E| shrunk by min(0.5, |O - E|)
            chi2 += d * d / e
    return chi2, dof, _chi2_sf(chi2, dof)


def _chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution for an integer dof (closed forms, no scipy)."""
    if x <= 0:
        return 1.0
    if dof % 2 == 0:  # sf = exp(-x/2) * sum_{k < dof/2} (x/2)^k / k!
        term, total = 1.0, 1.0
        for k in range(1, dof // 2):
            term *= (x / 2) / k
            total += term
        return math.exp(-x / 2) * total
    # odd dof: erfc(sqrt(x/2)) + correction terms
    total = math.erfc(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for k in range(1, (dof + 1) // 2):
        total += term
        term *= x / (2 * k + 1)
    return min(1.0, total)


def position_bias(verdicts: Iterable[tuple[bool, str]], swap_prob: float = 0.5) -> dict[str, Any]:
    """Does the judge favour the image shown first? ``verdicts``: (swapped, preference) of judged pairs.

    - ``first_shown_rate``: % of decisive verdicts (not ties) that chose the first-shown image, with an
      exact two-sided binomial p-value against 50 % (only for swap_prob = 0.5, where it is exact).
    - the official check: chi-square test of shown order (not swapped / swapped) x outcome of run A
      (win / loss / tie), and the win rate of run A in each order.
    """
    table = {
        "not_swapped": dict.fromkeys(("win", "loss", "tie"), 0),
        "swapped": dict.fromkeys(("win", "loss", "tie"), 0),
    }
    first = decisive = 0
    for swapped, pref in verdicts:
        table["swapped" if swapped else "not_swapped"][outcome_of(pref, swapped)] += 1
        if pref in ("image_a", "image_b"):
            decisive += 1
            first += pref == "image_a"
    chi = chi2_independence([list(table["not_swapped"].values()), list(table["swapped"].values())])
    binom = binomial_two_sided_p(first, decisive) if decisive and swap_prob == 0.5 else None

    def win_rate(row: dict[str, int]) -> float | None:
        n = sum(row.values())
        return 100.0 * row["win"] / n if n else None

    p_for_verdict = binom if binom is not None else (chi[2] if chi else None)
    if p_for_verdict is None:
        verdict = "not testable (too few or one-sided verdicts)"
    elif p_for_verdict < 0.01:
        verdict = "significant position bias (p < 0.01)"
    elif p_for_verdict < 0.05:
        verdict = "possible position bias (p < 0.05)"
    else:
        verdict = "no significant position bias"
    return {
        "n_decisive": decisive,
        "first_shown_preferred": first,
        "first_shown_rate": 100.0 * first / decisive if decisive else None,
        "binomial_p": binom,
        "chi2": chi[0] if chi else None,
        "chi2_dof": chi[1] if chi else None,
        "chi2_p": chi[2] if chi else None,
        "table": table,
        "win_rate_not_swapped": win_rate(table["not_swapped"]),
        "win_rate_swapped": win_rate(table["swapped"]),
        "interpretation": verdict,
    }
