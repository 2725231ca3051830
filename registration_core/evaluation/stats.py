"""Statistics of a study's metrics: ANOVA (repeated measures by default), paired comparisons,
Tukey HSD post-hoc tests (independent model) and interaction plots.

With ``model="repeated"`` (default) the pair is the subject (:mod:`.repeated`), and every factor's
levels, the methods and the best grid point are compared within pairs (:mod:`.paired`). The
``independent`` model, kept for the seed reproduction, is described next. The design: each row of ``metrics.csv`` is one registered pair (atlas x moving) at one grid
point; the grid factors (e.g. learning rate, kernel, epochs) are the ANOVA's factors, and the
pairs are the replicates of each cell (factor-level combination). The model is the full
factorial with every interaction, ``y ~ C(a) * C(b) * ...`` (each factor categorical), fitted by
OLS (statsmodels) and tested with ``anova_lm(typ=2)``:

* type II sums of squares test each term after all other terms that do not contain it, so
  main effects respect marginality and do not depend on the contrast coding;
* for a balanced design (the same number of pairs in every cell, as a grid study produces when
  every job succeeds) the factors are orthogonal and types I, II and III give identical sums of
  squares; type II stays meaningful for mildly unbalanced designs, whereas type III would need
  sum-to-zero contrasts.

Degenerate designs do not raise: :func:`run_anova` returns an :class:`AnovaResult` whose table is
None and whose message says why (no residual degrees of freedom, a single-level factor, a
missing cell, a constant response, or a zero residual sum of squares).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import statsmodels.formula.api as smf
from matplotlib.figure import Figure
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from registration_core.core.io import atomic_path, write_json
from registration_core.errors import InputError
from registration_core.evaluation import paired, registry
from registration_core.evaluation.aggregate import write_table
from registration_core.evaluation.repeated import SUBJECT, RepeatedNotPossible, fit_repeated, subject_ids
from registration_core.layout import ANOVA_SUMMARY, anova_file

TABLE_COLUMNS = ("sum_sq", "df", "mean_sq", "F", "F_crit", "p", "partial_eta_sq", "significant")
RESIDUAL = "Residual"
MODELS = ("repeated", "independent")
"""``anova.model``: ``repeated`` (default; the pair is the subject: AnovaRM, or a mixed model when cells
are missing, :mod:`registration_core.evaluation.repeated`) or ``independent`` (the between-pairs
factorial ANOVA below, pairs as replicates: the seed reproduction's model)."""
SUMS_OF_SQUARES = "type II (identical to types I and III when the design is balanced)"


class AnovaNotPossible(Exception):
    """The design cannot be analysed (the message says why); not an input error."""


@dataclass(frozen=True)
class AnovaResult:
    """Outcome of one response's ANOVA.

    Attributes:
        response: the response column.
        factors: the factor columns.
        n_obs: observations used (rows with a finite response and every factor given).
        table: ANOVA table (rows: factors, ``a:b`` interactions, ``Residual``; columns
            :data:`TABLE_COLUMNS`) or None when the design could not be analysed.
        message: what was done, or why nothing could be.
        tukey: factor -> Tukey HSD table, for each significant main effect (independent model).
        model: the model that ran: ``independent``, ``repeated`` (AnovaRM) or ``mixed``.
    """

    response: str
    factors: tuple[str, ...]
    n_obs: int
    table: pd.DataFrame | None
    message: str
    tukey: dict[str, pd.DataFrame] = field(default_factory=dict)
    model: str = "independent"

    @property
    def significant_terms(self) -> list[str]:
        """Names of the terms with p < alpha (empty when no table)."""
        if self.table is None:
            return []
        return [term for term, sig in self.table["significant"].items() if sig]


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InputError(f"alpha: {alpha} is not allowed; it must lie in (0, 1)")


def observations(df: pd.DataFrame, response: str, factors: list[str]) -> pd.DataFrame:
    """Columns ``factors + [response]`` of the rows with a finite response and every factor given.

    Raises:
        InputError: a column is missing, the response is not numeric, or no factor is given.
    """
    if not factors:
        raise InputError("factors: at least one ANOVA factor is required")
    missing = [c for c in [response, *factors] if c not in df.columns]
    if missing:
        raise InputError(f"column(s) {', '.join(missing)} not in the table; available: {', '.join(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[response]):
        raise InputError(f"response {response!r} is not numeric (dtype {df[response].dtype})")
    data = df[[*factors, response]]
    keep = np.isfinite(data[response].to_numpy(dtype=float)) & data[factors].notna().all(axis=1).to_numpy()
    return data[keep].reset_index(drop=True)


def design_problem(data: pd.DataFrame, response: str, factors: list[str]) -> str | None:
    """Why a full factorial ANOVA of ``data`` is impossible, or None when it can run."""
    if data.empty:
        return f"no observation has a finite {response!r} and every factor ({', '.join(factors)})"
    values = data[response].to_numpy(dtype=float)
    if np.ptp(values) == 0:
        return f"response {response!r} is constant ({values[0]:g} in {len(values)} observations): nothing to explain"
    for factor in factors:
        levels = data[factor].unique()
        if len(levels) < 2:
            return f"factor {factor!r} has a single level ({levels[0]}); each factor needs at least two"
    n_cells = int(np.prod([data[f].nunique() for f in factors]))
    present = len(data.groupby(factors).size())
    if present < n_cells:
        return (
            f"incomplete design: {n_cells - present} of {n_cells} factor-level combinations have no "
            "observation; a full factorial ANOVA needs every combination"
        )
    if len(data) <= n_cells:
        return (
            f"too few replicates: {len(data)} observations in {n_cells} cells leave no residual degrees "
            "of freedom; at least one cell needs two or more pairs"
        )
    return None


def _term_name(statsmodels_term: str, factors: list[str]) -> str:
    """``C(f0):C(f1)`` -> ``a:b`` (the model uses placeholder column names f0, f1, ...)."""
    return re.sub(r"C\(f(\d+)\)", lambda m: factors[int(m.group(1))], statsmodels_term)


def anova_table(df: pd.DataFrame, response: str, factors: list[str], alpha: float) -> pd.DataFrame:
    """Full factorial ANOVA (all interactions, type II sums of squares) of ``response``.

    Args:
        df: one row per observation (pair x grid point); rows with a non-finite response or a
            missing factor are dropped.
        response: numeric column (e.g. ``dice_mean``).
        factors: categorical factor columns (numbers are treated as categories).
        alpha: significance level for ``F_crit`` and ``significant``.

    Returns:
        Table indexed by term (factor names, ``a:b`` interactions, ``Residual``) with columns
        sum_sq, df, mean_sq, F, F_crit (= F.ppf(1 - alpha, df, df_resid)), p,
        partial_eta_sq (= SS / (SS + SS_resid)), significant (p < alpha). The Residual row has
        NaN F, F_crit, p, partial_eta_sq and significant False.

    Raises:
        AnovaNotPossible: degenerate design (see :func:`design_problem`), or a zero residual
            sum of squares (F undefined).
        InputError: missing columns, non-numeric response, alpha outside (0, 1).
    """
    _check_alpha(alpha)
    data = observations(df, response, factors)
    problem = design_problem(data, response, factors)
    if problem:
        raise AnovaNotPossible(problem)
    model_data = data.set_axis([*(f"f{i}" for i in range(len(factors))), "y"], axis=1)
    formula = "y ~ " + " * ".join(f"C(f{i})" for i in range(len(factors)))
    raw = anova_lm(smf.ols(formula, data=model_data).fit(), typ=2)
    ss_resid, df_resid = raw.loc[RESIDUAL, "sum_sq"], raw.loc[RESIDUAL, "df"]
    if ss_resid <= 1e-12 * raw["sum_sq"].sum():
        raise AnovaNotPossible(
            "residual sum of squares is zero (the pairs agree exactly within every cell): F is undefined"
        )
    table = pd.DataFrame(index=[_term_name(t, factors) for t in raw.index])
    table.index.name = "term"
    table["sum_sq"] = raw["sum_sq"].to_numpy()
    table["df"] = raw["df"].to_numpy()
    table["mean_sq"] = table["sum_sq"] / table["df"]
    table["F"] = raw["F"].to_numpy()
    table["F_crit"] = sps.f.ppf(1 - alpha, table["df"], df_resid)
    table["p"] = raw["PR(>F)"].to_numpy()
    table["partial_eta_sq"] = table["sum_sq"] / (table["sum_sq"] + ss_resid)
    table.loc[RESIDUAL, ["F_crit", "partial_eta_sq"]] = np.nan
    table["significant"] = (table["p"] < alpha).to_numpy()
    return table


def tukey_table(data: pd.DataFrame, response: str, factor: str, alpha: float) -> pd.DataFrame:
    """Tukey HSD of ``response`` between the levels of one factor (pooled over the other factors).

    Returns:
        Columns group1, group2 (levels as text), meandiff (mean of group2 - mean of group1),
        p_adj (full precision, unlike statsmodels' rounded summary), lower, upper (CI of
        meandiff at 1 - alpha), reject.
    """
    result = pairwise_tukeyhsd(data[response].to_numpy(dtype=float), data[factor].astype(str).to_numpy(), alpha=alpha)
    first, second = np.triu_indices(len(result.groupsunique), 1)  # statsmodels' pair order
    return pd.DataFrame(
        {
            "group1": result.groupsunique[first],
            "group2": result.groupsunique[second],
            "meandiff": result.meandiffs,
            "p_adj": result.pvalues,
            "lower": result.confint[:, 0],
            "upper": result.confint[:, 1],
            "reject": result.reject,
        }
    )


def run_anova(df: pd.DataFrame, response: str, factors: list[str], alpha: float) -> AnovaResult:
    """ANOVA of ``response`` plus Tukey HSD on each significant main effect; never raises on a degenerate design.

    Raises:
        InputError: missing columns, non-numeric response, alpha outside (0, 1).
    """
    data = observations(df, response, factors)
    dropped = len(df) - len(data)
    note = f" ({dropped} row(s) without a finite {response} or a factor value left out)" if dropped else ""
    try:
        table = anova_table(data, response, factors, alpha)
    except AnovaNotPossible as reason:
        return AnovaResult(response, tuple(factors), len(data), None, f"ANOVA not run: {reason}{note}")
    cell_sizes = data.groupby(factors).size()
    balance = (
        f"balanced, {cell_sizes.iloc[0]} pairs per cell"
        if cell_sizes.nunique() == 1
        else f"unbalanced, {cell_sizes.min()}-{cell_sizes.max()} pairs per cell"
    )
    message = (
        f"full factorial ANOVA of {response} on {len(data)} observations in {len(cell_sizes)} cells "
        f"({balance}), type II sums of squares, alpha {alpha:g}{note}"
    )
    tukey = {f: tukey_table(data, response, f, alpha) for f in factors if table.loc[f, "significant"]}
    return AnovaResult(response, tuple(factors), len(data), table, message, tukey)


def repeated_observations(df: pd.DataFrame, response: str, factors: list[str]) -> pd.DataFrame:
    """:func:`observations` plus the subject column (``atlas__moving``) of each kept row."""
    if not {"atlas", "moving"} <= set(df.columns):
        raise InputError("repeated-measures ANOVA: the metrics table needs 'atlas' and 'moving' columns (the pairs)")
    data = observations(df.assign(**{SUBJECT: subject_ids(df)}), response, [*factors, SUBJECT])
    return data


def run_repeated(df: pd.DataFrame, response: str, factors: list[str], alpha: float) -> AnovaResult:
    """Repeated-measures ANOVA of ``response`` with the pair as subject; never raises on a degenerate design.

    Table columns :data:`registration_core.evaluation.repeated.RM_COLUMNS` (no Residual row: each
    term has its own error stratum). The message says which model ran and why.
    """
    data = repeated_observations(df, response, factors)
    dropped = len(df) - len(data)
    note = f" ({dropped} row(s) without a finite {response} or a factor value left out)" if dropped else ""
    try:
        fit = fit_repeated(data, response, factors, alpha)
    except RepeatedNotPossible as reason:
        return AnovaResult(response, tuple(factors), len(data), None, f"ANOVA not run: {reason}{note}", model="none")
    if fit.model == "repeated":
        what = "repeated-measures ANOVA (statsmodels AnovaRM, pair as subject, no sphericity correction)"
    else:
        what = "linear mixed model with a random intercept per pair (REML), Wald chi-square test per term"
    message = (
        f"{what} of {response} on {len(data)} observations of {fit.n_subjects} pairs, alpha {alpha:g}: "
        f"{fit.reason}{note}"
    )
    return AnovaResult(response, tuple(factors), len(data), fit.table, message, model=fit.model)


def interaction_figure(df: pd.DataFrame, response: str, factors: list[str]) -> Figure:
    """Interaction plots: mean ``response`` with 95 % bootstrap CI vs one factor, hue another.

    One panel per unordered pair of factors (x = the first, hue = the second); a single factor
    gives a main-effect plot. Rendered with the Agg canvas (no display needed).
    """
    pairs = list(itertools.combinations(factors, 2)) or [(factors[0], None)]
    ncols = min(3, len(pairs))
    nrows = -(-len(pairs) // ncols)
    figure = Figure(figsize=(5 * ncols, 4 * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (x, hue) in zip(axes, pairs, strict=False):
        hue_order = [str(level) for level in sorted(df[hue].unique())] if hue else None
        data = df.assign(**{hue: df[hue].astype(str)}) if hue else df  # categorical palette for numeric levels
        sns.pointplot(
            data=data, x=x, y=response, hue=hue, hue_order=hue_order, palette="colorblind" if hue else None,
            errorbar=("ci", 95), n_boot=1000, seed=0, dodge=0.2 if hue else False, capsize=0.1, ax=ax,
        )
        ax.set_title(f"{response}: {x}" + (f" × {hue}" if hue else ""))
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    return figure


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> None:
    """Save ``figure`` as PNG to ``path`` atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)


def select_rows(metrics: pd.DataFrame, factors: list[str], method: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows for the ANOVA and a description of the selection.

    With ``method`` given: that method's rows. Otherwise the rows of every method whose rows
    all have every factor (methods lacking a grid factor cannot enter a factorial design).

    Returns:
        (rows, selection) where selection holds ``methods``, ``excluded_methods`` and a ``note``.
    """
    all_methods = list(dict.fromkeys(metrics["method"]))
    if method is not None:
        if method not in all_methods:
            raise InputError(f"method: {method!r} is not in the study; available: {', '.join(all_methods)}")
        chosen = [method]
        note = f"rows of method {method} (requested)"
    else:
        complete = metrics[factors].notna().all(axis=1).groupby(metrics["method"], sort=False).all()
        chosen = [m for m in all_methods if complete[m]]
        note = (
            f"rows of the method(s) having every factor ({', '.join(factors)}): {', '.join(chosen) or 'none'}"
        )
    excluded = [m for m in all_methods if m not in chosen]
    if excluded:
        note += f"; excluded: {', '.join(excluded)}"
    rows = metrics[metrics["method"].isin(chosen)].reset_index(drop=True)
    return rows, {"methods": chosen, "excluded_methods": excluded, "note": note}


def _read_metrics(metrics_csv: Path) -> pd.DataFrame:
    """metrics.csv as a frame; InputError naming the file when missing, unreadable or without ``method``."""
    if not metrics_csv.is_file():
        raise InputError(f"{metrics_csv}: metrics table not found")
    try:
        metrics = pd.read_csv(metrics_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{metrics_csv}: cannot read as a CSV table ({exc})".splitlines()[0]) from exc
    if "method" not in metrics.columns:
        raise InputError(f"{metrics_csv}: has no 'method' column")
    return metrics


def _write_result(result: AnovaResult, rows: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """Write one response's table, Tukey tables and interaction plot; return its anova.json entry."""
    entry: dict[str, Any] = {
        "model": result.model,
        "message": result.message,
        "n_obs": result.n_obs,
        "significant_terms": result.significant_terms,
        "table": None,
        "tukey": {},
        "interaction_plot": None,
    }
    if result.table is not None:
        entry["table"] = anova_file("table", response=result.response)
        write_table(result.table.reset_index(), out_dir / entry["table"])
    for factor, tukey in result.tukey.items():
        entry["tukey"][factor] = anova_file("tukey", response=result.response, factor=factor)
        write_table(tukey, out_dir / entry["tukey"][factor])
    data = observations(rows, result.response, list(result.factors))
    if not data.empty:
        entry["interaction_plot"] = anova_file("interaction", response=result.response)
        figure = interaction_figure(data, result.response, list(result.factors))
        save_figure(figure, out_dir / entry["interaction_plot"])
    return entry


def differences_figure(wide: pd.DataFrame, response: str, reference: str) -> Figure:
    """Per-pair differences ``method - reference`` of ``response`` (one point per pair, zero line)."""
    others = [c for c in wide.columns if c != reference]
    long = pd.concat(
        [pd.DataFrame({"comparison": f"{c} − {reference}", "difference": wide[c] - wide[reference]}) for c in others],
        ignore_index=True,
    ).dropna()
    figure = Figure(figsize=(7, 1.4 + 0.5 * len(others)), layout="constrained")
    ax = figure.subplots()
    sns.stripplot(data=long, x="difference", y="comparison", color="#1f3b57", size=4, alpha=0.8, ax=ax)
    sns.pointplot(data=long, x="difference", y="comparison", color="#c0392b", errorbar=None, markers="|",
                  markersize=20, linestyle="none", ax=ax)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlabel(f"per-pair difference of {response}")
    ax.set_ylabel("")
    ax.grid(axis="x", alpha=0.3)
    return figure


def _group_wide(rows: pd.DataFrame, response: str) -> pd.DataFrame:
    """Pairs x ``method · grid_id`` of ``response`` (mean over duplicate rows)."""
    data = rows.assign(**{SUBJECT: subject_ids(rows), "_group": rows["method"].astype(str) + " · " + rows["grid_id"].astype(str)})
    return data.groupby([SUBJECT, "_group"], sort=False)[response].mean().unstack("_group")


def _method_comparison(
    metrics: pd.DataFrame, response: str, higher: bool, alpha: float, seed: int, out_dir: Path, entry: dict[str, Any]
) -> list[str]:
    """Methods head to head, each at its best grid point by mean, on the same pairs; returns conclusions."""
    wide_groups = _group_wide(metrics.dropna(subset=[response]), response)
    best: dict[str, str] = {}
    for group in wide_groups.mean().sort_values(ascending=not higher).index:
        best.setdefault(group.split(" · ")[0], group)
    if len(best) < 2:
        return []
    wide = wide_groups[list(best.values())].set_axis(list(best), axis=1)
    table = paired.compare_conditions(wide, alpha, seed).assign(
        grid_a=lambda t: t["a"].map(best), grid_b=lambda t: t["b"].map(best)
    )
    entry["methods"] = anova_file("methods", response=response)
    write_table(table, out_dir / entry["methods"])
    leader = next(iter(best))
    entry["methods_plot"] = anova_file("methods_plot", response=response)
    save_figure(differences_figure(wide, response, leader), out_dir / entry["methods_plot"])
    entry["methods_best_grid"] = best
    return [paired.sentence(response, row, higher, alpha, "methods") for _, row in table.iterrows()]


def _paired_results(
    metrics: pd.DataFrame, rows: pd.DataFrame, response: str, factors: list[str], alpha: float, seed: int,
    out_dir: Path, entry: dict[str, Any],
) -> None:
    """Paired comparisons of each factor's levels, the methods and the best grid point (into ``entry``)."""
    higher = registry.find(response).higher_is_better if registry.find(response) else None
    if higher is None:
        entry["conclusions"] = [f"{response} has no better direction: no ranking or winner is reported"]
        return
    conclusions: list[str] = []
    data = repeated_observations(rows, response, factors)
    entry["paired"], entry["friedman"] = {}, {}
    for index, factor in enumerate(factors):
        wide = paired.by_level(data, response, factor)
        table = paired.compare_conditions(wide, alpha, seed + 1000 * index)
        entry["paired"][factor] = anova_file("paired", response=response, factor=factor)
        write_table(table, out_dir / entry["paired"][factor])
        entry["friedman"][factor] = paired.friedman(wide)
        if len(table) == 1:
            conclusions.append(paired.sentence(response, table.iloc[0], higher, alpha, factor))
        elif len(table) > 1:
            top = paired.best_against_runner_up(wide, higher, alpha, seed)
            row = table[(table["a"] == top.runner_up) & (table["b"] == top.best) | (table["a"] == top.best) & (table["b"] == top.runner_up)].iloc[0]
            friedman = entry["friedman"][factor]
            extra = "" if friedman is None else f"; Friedman over {wide.shape[1]} levels {paired.format_p(friedman['p'])}"
            conclusions.append(paired.sentence(response, row, higher, alpha, f"{factor} (best two levels)") + extra)
    conclusions.extend(_method_comparison(metrics, response, higher, alpha, seed, out_dir, entry))
    groups = _group_wide(rows.dropna(subset=[response]), response)
    top = paired.best_against_runner_up(groups, higher, alpha, seed)
    entry["best"] = {"best": top.best, "runner_up": top.runner_up, "comparison": top.comparison,
                     "distinguishable": top.distinguishable}
    if top.runner_up is not None and top.comparison is not None:
        row = {"a": top.runner_up, "b": top.best, **top.comparison}
        verdict = paired.sentence(response, row, higher, alpha, "best grid point")
        if top.distinguishable is not True:
            verdict += f"; the best grid point {top.best} is not distinguishable from the runner-up"
        conclusions.append(verdict)
    entry["conclusions"] = conclusions


def run_anova_study(
    metrics_csv: Path,
    responses: list[str],
    factors: list[str],
    alpha: float,
    out_dir: Path,
    method: str | None = None,
    model: str = "repeated",
    seed: int = 0,
) -> None:
    """Statistics of each response of a study's metrics.csv; writes its results to ``out_dir``.

    Files (names from :data:`registration_core.layout.ANOVA_FILES`): ``<response>.csv`` (ANOVA
    table with a ``term`` column; only when the ANOVA ran), ``tukey_<response>_<factor>.csv``
    (independent model, each significant main effect), ``interaction_<response>.png``; with the
    repeated model also ``paired_<response>_<factor>.csv`` (levels compared within pairs) and,
    with two or more methods, ``methods_<response>.csv`` / ``.png`` (each method at its best grid
    point, head to head on the same pairs); and ``anova.json``: alpha, model, factors, the row
    selection (see :func:`select_rows`), and per response the model that ran and why, its
    significant terms, file names, Friedman tests, the best grid point against the runner-up and
    the conclusions in plain words.

    Args:
        model: one of :data:`MODELS`.
        seed: seed of the bootstrap confidence intervals.

    Raises:
        InputError naming the file, column or parameter: missing/unreadable metrics.csv, a
        factor or response not in it (with the available columns), an unknown method or model,
        alpha outside (0, 1).
    """
    metrics_csv, out_dir = Path(metrics_csv), Path(out_dir)
    _check_alpha(alpha)
    if model not in MODELS:
        raise InputError(f"anova.model: {model!r} is not allowed; allowed: {', '.join(MODELS)}")
    metrics = _read_metrics(metrics_csv)
    if metrics.empty:  # every job of the study failed (failures.csv): nothing to test
        write_json({
            "alpha": alpha, "model": model, "factors": factors, "method": method, "n_rows": 0, "seed": seed,
            "selection": {"methods": [], "excluded_methods": [], "note": "no registration succeeded"}, "responses": {},
        }, out_dir / ANOVA_SUMMARY)
        return
    for kind, names in (("factor", factors), ("response", responses)):
        missing = [n for n in names if n not in metrics.columns]
        if missing:
            raise InputError(
                f"{metrics_csv}: ANOVA {kind}(s) {', '.join(missing)} not found; available columns: "
                f"{', '.join(metrics.columns)}"
            )
    if not factors or not responses:
        raise InputError("anova: at least one factor and one response are required")
    text = [r for r in responses if not pd.api.types.is_numeric_dtype(metrics[r])]
    if text:
        raise InputError(f"{metrics_csv}: ANOVA response(s) {', '.join(text)} are not numeric columns")
    rows, selection = select_rows(metrics, factors, method)
    entries = {}
    for response in responses:
        if model == "independent":
            entries[response] = _write_result(run_anova(rows, response, factors, alpha), rows, out_dir)
            continue
        entries[response] = _write_result(run_repeated(rows, response, factors, alpha), rows, out_dir)
        _paired_results(metrics, rows, response, factors, alpha, seed, out_dir, entries[response])
    summary = {
        "alpha": alpha,
        "model": model,
        "factors": factors,
        "method": method,
        "selection": selection,
        "n_rows": len(rows),
        "sums_of_squares": SUMS_OF_SQUARES if model == "independent" else None,
        "seed": seed,
        "responses": entries,
    }
    write_json(summary, out_dir / ANOVA_SUMMARY)  # strict JSON: undefined p-values as null
