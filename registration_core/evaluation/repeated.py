"""Repeated-measures ANOVA of a grid study: the registered pair is the subject.

Every pair is registered at every grid point (and by every method), so the cells of the design
are within-subject conditions. Pair-to-pair differences, which are large in registration (one
pair is easy, another hard), belong to the subject stratum and do not dilute the tests of the
factors, as they do when the pairs are taken for independent replicates
(:func:`registration_core.evaluation.stats.anova_table`, ``anova.model: independent``).

Two models, chosen by the data:

* ``repeated`` (statsmodels ``AnovaRM``) when every pair has every cell: the univariate
  repeated-measures ANOVA, each term tested against its own term x subject interaction (no
  sphericity correction). Partial eta squared ``F df / (F df + df_err)`` equals
  ``SS / (SS + SS_err)`` of the term's stratum.
* ``mixed`` (statsmodels ``MixedLM``, a random intercept per pair, REML) when some cells are
  missing for some pairs (failed jobs): ``y ~ C(a, Sum) * C(b, Sum) * ...``, each term by a Wald
  chi-square test of its coefficients (sum-to-zero contrasts, so main effects are averaged over
  the other factors' levels). ``F`` is then chi2 / df and ``partial_eta_sq`` is not defined.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.anova import AnovaRM

SUBJECT = "pair"
RM_COLUMNS = ("F", "df", "df_error", "F_crit", "p", "partial_eta_sq", "significant")


class RepeatedNotPossible(Exception):
    """The repeated-measures design cannot be analysed (the message says why)."""


@dataclass(frozen=True)
class RepeatedFit:
    """A fitted repeated-measures model: ``model`` is ``repeated`` or ``mixed``; ``reason`` why."""

    model: str
    reason: str
    table: pd.DataFrame
    n_subjects: int


def subject_ids(rows: pd.DataFrame) -> pd.Series:
    """The subject of each metrics.csv row: ``atlas__moving`` (the registered pair)."""
    return rows["atlas"].astype(str) + "__" + rows["moving"].astype(str)


def cell_means(data: pd.DataFrame, response: str, factors: list[str]) -> pd.DataFrame:
    """One value per subject x cell (the mean when several rows share one, e.g. two methods)."""
    return data.groupby([SUBJECT, *factors], as_index=False, sort=True)[response].mean()


def _check(data: pd.DataFrame, response: str, factors: list[str]) -> None:
    if data[SUBJECT].nunique() < 2:
        raise RepeatedNotPossible("fewer than two pairs: a repeated-measures test needs at least two subjects")
    for factor in factors:
        if data[factor].nunique() < 2:
            raise RepeatedNotPossible(f"factor {factor!r} has a single level; each factor needs at least two")
    if np.ptp(data[response].to_numpy(dtype=float)) == 0:
        raise RepeatedNotPossible(f"response {response!r} is constant: nothing to explain")


def _finish(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    table.index.name = "term"
    table["significant"] = (table["p"] < alpha).to_numpy()
    return table[list(RM_COLUMNS)]


def anova_rm(data: pd.DataFrame, response: str, factors: list[str], alpha: float) -> pd.DataFrame:
    """AnovaRM table of complete data (every subject has every cell once); columns :data:`RM_COLUMNS`."""
    placeholder = data.rename(columns={f: f"f{i}" for i, f in enumerate(factors)})
    within = [f"f{i}" for i in range(len(factors))]
    raw = AnovaRM(placeholder, response, SUBJECT, within=within).fit().anova_table
    table = pd.DataFrame(index=[re.sub(r"f(\d+)", lambda m: factors[int(m.group(1))], t) for t in raw.index])
    table["F"] = raw["F Value"].to_numpy()
    table["df"] = raw["Num DF"].to_numpy()
    table["df_error"] = raw["Den DF"].to_numpy()
    table["F_crit"] = sps.f.ppf(1 - alpha, table["df"], table["df_error"])
    table["p"] = raw["Pr > F"].to_numpy()
    table["partial_eta_sq"] = table["F"] * table["df"] / (table["F"] * table["df"] + table["df_error"])
    if not np.all(np.isfinite(table["F"])):
        raise RepeatedNotPossible("zero within-pair variation of a term's error stratum: F is undefined")
    return _finish(table, alpha)


def mixed_model(data: pd.DataFrame, response: str, factors: list[str], alpha: float) -> pd.DataFrame:
    """Random-intercept mixed model (pair as group), Wald test per term; columns :data:`RM_COLUMNS`."""
    placeholder = data.rename(columns={**{f: f"f{i}" for i, f in enumerate(factors)}, response: "y"})
    formula = "y ~ " + " * ".join(f"C(f{i}, Sum)" for i in range(len(factors)))
    with warnings.catch_warnings():  # boundary fits (pair variance near 0) are reported by statsmodels as warnings
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(formula, placeholder, groups=placeholder[SUBJECT]).fit(reml=True)
        wald = fit.wald_test_terms(scalar=True).summary_frame()
    wald = wald.drop(index="Intercept")
    names = [re.sub(r"C\(f(\d+), Sum\)", lambda m: factors[int(m.group(1))], t) for t in wald.index]
    table = pd.DataFrame(index=names)
    table["df"] = wald["df constraint"].to_numpy(dtype=float)
    table["F"] = wald["chi2"].to_numpy(dtype=float) / table["df"]
    table["df_error"] = np.nan
    table["F_crit"] = sps.chi2.ppf(1 - alpha, table["df"]) / table["df"]
    table["p"] = wald["P>chi2"].to_numpy(dtype=float)
    table["partial_eta_sq"] = np.nan
    return _finish(table, alpha)


def fit_repeated(data: pd.DataFrame, response: str, factors: list[str], alpha: float) -> RepeatedFit:
    """AnovaRM when every pair has every cell, else the mixed model on the pairs' available cells.

    Args:
        data: columns :data:`SUBJECT`, ``factors`` and ``response`` (finite), one row per
            observation; rows sharing a subject and cell are averaged first.

    Raises:
        RepeatedNotPossible: fewer than two pairs, a single-level factor, a constant response,
            an undefined F.
    """
    cells = cell_means(data, response, factors)
    _check(cells, response, factors)
    n_cells = int(np.prod([cells[f].nunique() for f in factors]))
    per_subject = cells.groupby(SUBJECT).size()
    n_subjects = len(per_subject)
    if (per_subject == n_cells).all():
        reason = f"every one of the {n_subjects} pairs has all {n_cells} cells"
        return RepeatedFit("repeated", reason, anova_rm(cells, response, factors, alpha), n_subjects)
    missing = int(n_cells * n_subjects - per_subject.sum())
    reason = f"{missing} of {n_cells * n_subjects} pair x cell values are missing (failed or absent jobs)"
    return RepeatedFit("mixed", reason, mixed_model(cells, response, factors, alpha), n_subjects)
