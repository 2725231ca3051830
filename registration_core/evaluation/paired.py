"""Paired comparisons on the registered pairs: levels of a factor, methods, the best grid point.

Every comparison is within pairs: for two conditions A and B, the per-pair differences
``d = y_B - y_A`` over the pairs measured in both (a condition's value for a pair is its mean
over the other factors' levels). Reported: the mean difference, a seeded percentile bootstrap
95 % confidence interval of it (resampling pairs), the paired t test (``scipy.stats.ttest_rel``)
and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for small samples), each
Holm-corrected over the comparisons of one table (``statsmodels multipletests``); the Friedman
test (``scipy.stats.friedmanchisquare``) across all levels when a factor has more than two.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from registration_core.evaluation.repeated import SUBJECT

N_BOOT = 2000
CI_LEVEL = 0.95
PAIRED_COLUMNS = (
    "a", "b", "n_pairs", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_t", "p_wilcoxon",
    "p_t_holm", "p_wilcoxon_holm", "significant",
)


def bootstrap_ci(diffs: np.ndarray, seed: int, n_boot: int = N_BOOT) -> tuple[float, float]:
    """Percentile bootstrap ``CI_LEVEL`` interval of the mean of ``diffs`` (pairs resampled, seeded)."""
    if len(diffs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _tests(diffs: np.ndarray) -> tuple[float, float]:
    """(paired t p, Wilcoxon signed-rank p) of the differences; NaN where a test is undefined
    (fewer than two pairs; t: no variation of the differences; Wilcoxon: every difference zero)."""
    if len(diffs) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties and tiny samples; the p-values stand
        p_t = float(sps.ttest_1samp(diffs, 0.0).pvalue) if np.ptp(diffs) > 0 else math.nan  # = ttest_rel(b, a)
        p_w = float(sps.wilcoxon(diffs).pvalue) if np.any(diffs != 0) else math.nan
    return p_t, p_w


def _holm(p: pd.Series) -> np.ndarray:
    """Holm-adjusted p-values; NaN entries stay NaN and do not count."""
    adjusted = np.full(len(p), math.nan)
    finite = p.notna().to_numpy()
    if finite.any():
        adjusted[finite] = multipletests(p[finite].to_numpy(), method="holm")[1]
    return adjusted


def compare_conditions(wide: pd.DataFrame, alpha: float, seed: int, reference: object | None = None) -> pd.DataFrame:
    """Every pair of columns of ``wide`` (index: pairs, columns: conditions) compared within pairs,
    or, with ``reference`` (a column), every other column against it.

    Returns:
        One row per (a, b) in column order (a = ``reference`` when given) with
        :data:`PAIRED_COLUMNS`; ``mean_diff`` is b - a, p-values Holm-corrected over the rows,
        ``significant`` is Holm-corrected paired t p < alpha.
    """
    if reference is None:
        comparisons = list(itertools.combinations(wide.columns, 2))
    else:
        comparisons = [(reference, column) for column in wide.columns if column != reference]
    rows = []
    for index, (a, b) in enumerate(comparisons):
        both = wide[[a, b]].dropna()
        diffs = (both[b] - both[a]).to_numpy(dtype=float)
        p_t, p_w = _tests(diffs)
        low, high = bootstrap_ci(diffs, seed + index)
        rows.append({
            "a": str(a), "b": str(b), "n_pairs": len(diffs), "mean_a": float(both[a].mean()),
            "mean_b": float(both[b].mean()), "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
            "ci_low": low, "ci_high": high, "p_t": p_t, "p_wilcoxon": p_w,
        })
    table = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS[:10]))
    table["p_t_holm"] = _holm(table["p_t"])
    table["p_wilcoxon_holm"] = _holm(table["p_wilcoxon"])
    table["significant"] = table["p_t_holm"] < alpha
    return table


def by_level(data: pd.DataFrame, response: str, factor: str) -> pd.DataFrame:
    """Pairs x levels of ``factor``: each pair's mean response at each level (over the other factors)."""
    wide = data.groupby([SUBJECT, factor])[response].mean().unstack(factor)
    return wide[sorted(wide.columns, key=_sort_key)]


def _sort_key(level: object) -> tuple[int, object]:
    return (0, level) if isinstance(level, (int, float, np.number)) else (1, str(level))


def friedman(wide: pd.DataFrame) -> dict[str, float] | None:
    """Friedman chi-square and p over the pairs measured at every level (None for two levels)."""
    complete = wide.dropna()
    if wide.shape[1] < 3 or len(complete) < 2:
        return None
    result = sps.friedmanchisquare(*(complete[c].to_numpy(dtype=float) for c in complete.columns))
    return {"chi2": float(result.statistic), "p": float(result.pvalue), "n_pairs": len(complete)}


@dataclass(frozen=True)
class BestPoint:
    """The best condition by mean and its paired test against the runner-up."""

    best: str
    runner_up: str | None
    comparison: dict[str, float] | None
    distinguishable: bool | None


def best_against_runner_up(wide: pd.DataFrame, higher: bool, alpha: float, seed: int) -> BestPoint:
    """Rank the columns of ``wide`` by their mean over pairs; test the best against the runner-up.

    ``distinguishable`` is True when the paired t test (uncorrected: one planned comparison)
    gives p < alpha, False when not, None without a runner-up or a defined test.
    """
    means = wide.mean().sort_values(ascending=not higher)
    best = str(means.index[0])
    if len(means) < 2:
        return BestPoint(best, None, None, None)
    runner = means.index[1]
    row = compare_conditions(wide[[runner, means.index[0]]], alpha, seed).iloc[0]
    comparison = {k: float(row[k]) for k in ("n_pairs", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_t", "p_wilcoxon")}
    verdict = None if math.isnan(row["p_t"]) else bool(row["p_t"] < alpha)
    return BestPoint(best, str(runner), comparison, verdict)


def format_p(p: float) -> str:
    """``p = 0.012``, ``p < 1e-6`` (below 1e-6) or ``p n/a``."""
    if math.isnan(p):
        return "p n/a"
    return "p < 1e-6" if p < 1e-6 else f"p = {p:.2g}"


def sentence(response: str, row: pd.Series | dict, higher: bool, alpha: float, what: str = "") -> str:
    """Plain-words conclusion of one comparison (``mean_diff`` = b - a, p Holm-corrected when given), e.g.
    ``GK beats AK by 0.004 dice_mean [0.003, 0.005], paired p < 1e-6, 12 pairs``.

    The margin and its interval are the winner's improvement (positive: higher for a
    higher-is-better response, lower otherwise).
    """
    a, b, diff = str(row["a"]), str(row["b"]), float(row["mean_diff"])
    p = float(row.get("p_t_holm", row["p_t"]))
    low, high = float(row["ci_low"]), float(row["ci_high"])
    prefix = f"{what}: " if what else ""
    tail = f"paired {format_p(p)}, {int(row['n_pairs'])} pairs"
    if math.isnan(p) or p >= alpha:
        return (
            f"{prefix}{a} and {b} are not distinguishable on {response} "
            f"(b - a = {diff:.2g} [{low:.2g}, {high:.2g}], {tail})"
        )
    b_wins = (diff > 0) == higher
    winner, loser = (b, a) if b_wins else (a, b)
    sign = (1 if b_wins else -1) * (1 if higher else -1)  # improvement = sign * (b - a)
    margin, interval = sign * diff, sorted((sign * low, sign * high))
    return f"{prefix}{winner} beats {loser} by {margin:.2g} {response} [{interval[0]:.2g}, {interval[1]:.2g}], {tail}"
