"""Tests of the repeated-measures statistics (registration_core.evaluation.repeated, .paired and the
``anova`` command): a hand-worked case, an independent computation of the error strata, the
mixed model on missing cells, and the study table of the issue (strong pair effect, small
consistent factor effect, null factor)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from registration_core.cli import main
from registration_core.evaluation import paired
from registration_core.evaluation.repeated import SUBJECT, fit_repeated


def study_table(seed: int = 1, n_pairs: int = 12) -> pd.DataFrame:
    """metrics.csv rows: pairs differ with sd 0.03 Dice, GK adds +0.004 on every pair, lr does nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):
        pair_effect = rng.normal(0, 0.03)
        for kernel, effect in (("AK", 0.0), ("GK", 0.004)):
            for lr in (0.001, 0.005, 0.01):
                rows.append({
                    "method": "nodeo", "grid_id": f"kernel~{kernel}__lr~{lr}", "atlas": "s00", "moving": f"s{p + 1:02d}",
                    "kernel": kernel, "lr": lr, "dice_mean": 0.8 + pair_effect + effect + rng.normal(0, 0.001),
                })
    return pd.DataFrame(rows)


def test_one_factor_two_levels_equals_paired_t_squared() -> None:
    """Hand-worked: 3 pairs, levels A/B; differences 1, 2, 3 -> mean 2, sd 1, t = 2 sqrt(3), F = t^2 = 12."""
    data = pd.DataFrame({SUBJECT: ["p1", "p1", "p2", "p2", "p3", "p3"], "k": ["A", "B"] * 3,
                         "y": [10.0, 11.0, 20.0, 22.0, 30.0, 33.0]})
    fit = fit_repeated(data, "y", ["k"], 0.05)
    assert fit.model == "repeated"
    row = fit.table.loc["k"]
    assert row["F"] == pytest.approx(12.0)
    assert (row["df"], row["df_error"]) == (1, 2)
    assert row["p"] == pytest.approx(sps.ttest_rel([11, 22, 33], [10, 20, 30]).pvalue)
    assert row["partial_eta_sq"] == pytest.approx(12 / 14)  # SS_k = 6, SS_kxS = 1: 6 / (6 + 1)


def strata(df: pd.DataFrame, a: str, b: str, y: str) -> dict[str, tuple[float, int, float, int]]:
    """Balanced two-way within design by the error-strata formulas: term -> (SS, df, SS_err, df_err)."""
    s, n_a, n_b = df[SUBJECT].nunique(), df[a].nunique(), df[b].nunique()
    g = df[y].mean()
    m_a, m_b, m_s = df.groupby(a)[y].mean(), df.groupby(b)[y].mean(), df.groupby(SUBJECT)[y].mean()
    m_ab, m_as, m_bs = df.groupby([a, b])[y].mean(), df.groupby([a, SUBJECT])[y].mean(), df.groupby([b, SUBJECT])[y].mean()
    ss_a = s * n_b * ((m_a - g) ** 2).sum()
    ss_b = s * n_a * ((m_b - g) ** 2).sum()
    ss_as = n_b * sum((m_as[(i, k)] - m_a[i] - m_s[k] + g) ** 2 for i in m_a.index for k in m_s.index)
    ss_bs = n_a * sum((m_bs[(j, k)] - m_b[j] - m_s[k] + g) ** 2 for j in m_b.index for k in m_s.index)
    ss_ab = s * sum((m_ab[(i, j)] - m_a[i] - m_b[j] + g) ** 2 for i in m_a.index for j in m_b.index)
    cell = df.set_index([a, b, SUBJECT])[y]
    ss_abs = sum(
        (cell[(i, j, k)] - m_ab[(i, j)] - m_as[(i, k)] - m_bs[(j, k)] + m_a[i] + m_b[j] + m_s[k] - g) ** 2
        for i in m_a.index for j in m_b.index for k in m_s.index
    )
    da, db, ds = n_a - 1, n_b - 1, s - 1
    return {a: (ss_a, da, ss_as, da * ds), b: (ss_b, db, ss_bs, db * ds), f"{a}:{b}": (ss_ab, da * db, ss_abs, da * db * ds)}


def test_two_factors_match_error_strata() -> None:
    df = study_table().assign(**{SUBJECT: lambda d: d["atlas"] + "__" + d["moving"]})
    table = fit_repeated(df, "dice_mean", ["kernel", "lr"], 0.05).table
    for term, (ss, dof, ss_err, df_err) in strata(df, "kernel", "lr", "dice_mean").items():
        f_value = (ss / dof) / (ss_err / df_err)
        assert table.loc[term, "F"] == pytest.approx(f_value, rel=1e-9)
        assert table.loc[term, "p"] == pytest.approx(sps.f.sf(f_value, dof, df_err), rel=1e-6)
        assert table.loc[term, "partial_eta_sq"] == pytest.approx(ss / (ss + ss_err), rel=1e-9)


def test_missing_cells_use_the_mixed_model() -> None:
    df = study_table().assign(**{SUBJECT: lambda d: d["atlas"] + "__" + d["moving"]}).drop(index=[0, 7, 20])
    fit = fit_repeated(df, "dice_mean", ["kernel", "lr"], 0.05)
    assert fit.model == "mixed" and "3 of 72" in fit.reason
    assert fit.table.loc["kernel", "p"] < 1e-6
    assert fit.table.loc["lr", "p"] > 0.05


def test_paired_comparison_numbers() -> None:
    wide = pd.DataFrame({"AK": [0.70, 0.80, 0.75, 0.90], "GK": [0.71, 0.82, 0.76, 0.93]})
    row = paired.compare_conditions(wide, 0.05, seed=0).iloc[0]
    diffs = np.array([0.01, 0.02, 0.01, 0.03])
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    assert row["p_t"] == pytest.approx(sps.ttest_rel(wide["GK"], wide["AK"]).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert diffs.min() <= row["ci_low"] <= row["mean_diff"] <= row["ci_high"] <= diffs.max()
    again = paired.compare_conditions(wide, 0.05, seed=0).iloc[0]
    assert (again["ci_low"], again["ci_high"]) == (row["ci_low"], row["ci_high"])  # seeded
    text = paired.sentence("dice_mean", row, True, 0.05, "kernel")
    assert text.startswith("kernel: GK beats AK by 0.017 dice_mean [0.01, 0.025], paired p = 0.035, 4 pairs")


def test_comparisons_against_a_reference_only_are_corrected_among_themselves() -> None:
    wide = pd.DataFrame({"A": [0.70, 0.80, 0.75, 0.90], "B": [0.71, 0.82, 0.76, 0.93], "C": [0.60, 0.81, 0.70, 0.85]})
    table = paired.compare_conditions(wide, 0.05, seed=0, reference="C")
    assert list(zip(table["a"], table["b"])) == [("C", "A"), ("C", "B")]
    assert table["mean_diff"].tolist() == pytest.approx([(wide["A"] - wide["C"]).mean(), (wide["B"] - wide["C"]).mean()])
    low, high = sorted(table["p_t"])  # Holm over these two comparisons only: 2 p_low, then max(that, p_high)
    assert sorted(table["p_t_holm"]) == pytest.approx([min(1.0, 2 * low), max(min(1.0, 2 * low), high)])


def test_anova_command_on_the_issue_table(tmp_path: Path) -> None:
    """Strong pair effect, +0.004 on every pair, null lr: repeated measures finds the kernel (the
    independent model does not), not lr; the best grid point is not distinguishable from the runner-up."""
    csv = tmp_path / "metrics.csv"
    study_table().to_csv(csv, index=False)
    common = ["anova", "--metrics", str(csv), "--responses", "dice_mean", "--factors", "kernel,lr"]
    assert main([*common, "--out-dir", str(tmp_path / "rm")]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "ind"), "--model", "independent"]) == 0
    rm = pd.read_csv(tmp_path / "rm" / "dice_mean.csv").set_index("term")
    independent = pd.read_csv(tmp_path / "ind" / "dice_mean.csv").set_index("term")
    assert {"F", "p", "significant"} <= set(rm.columns)
    assert rm.loc["kernel", "p"] < 1e-8 and rm.loc["kernel", "significant"]
    assert not rm.loc["lr", "significant"]
    assert independent.loc["kernel", "p"] > 0.05
    summary = json.loads((tmp_path / "rm" / "anova.json").read_text())
    entry = summary["responses"]["dice_mean"]
    assert summary["model"] == "repeated" and entry["model"] == "repeated"
    assert entry["conclusions"][0].startswith("kernel: GK beats AK by 0.0039 dice_mean [")
    assert "paired p < 1e-6, 12 pairs" in entry["conclusions"][0]
    assert entry["best"]["distinguishable"] is False
    assert entry["friedman"]["lr"]["p"] > 0.05
    paired_lr = pd.read_csv(tmp_path / "rm" / entry["paired"]["lr"])
    assert len(paired_lr) == 3 and not paired_lr["significant"].any()


def test_methods_head_to_head(tmp_path: Path) -> None:
    table = study_table()
    other = table[table["grid_id"] == "kernel~AK__lr~0.001"].assign(
        method="demons", grid_id="default", kernel=np.nan, lr=np.nan, dice_mean=lambda d: d["dice_mean"] - 0.01
    )
    csv = tmp_path / "metrics.csv"
    pd.concat([table, other]).to_csv(csv, index=False)
    assert main(["anova", "--metrics", str(csv), "--responses", "dice_mean", "--factors", "kernel,lr",
                 "--out-dir", str(tmp_path / "out")]) == 0
    entry = json.loads((tmp_path / "out" / "anova.json").read_text())["responses"]["dice_mean"]
    methods = pd.read_csv(tmp_path / "out" / entry["methods"])
    assert set(methods[["a", "b"]].iloc[0]) == {"nodeo", "demons"} and methods["significant"].iloc[0]
    assert (tmp_path / "out" / entry["methods_plot"]).is_file()
    assert any(c.startswith("methods: nodeo beats demons") for c in entry["conclusions"])
