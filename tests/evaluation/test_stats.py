"""Tests of registration_core.evaluation.stats: ANOVA numbers against a hand computation, degenerate designs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from registration_core.errors import InputError
from registration_core.evaluation.stats import TABLE_COLUMNS, anova_table, run_anova, run_anova_study

ALPHA = 0.05


def balanced_design(n_rep: int = 3, seed: int = 0) -> pd.DataFrame:
    """2 (kernel) x 3 (lr) design, ``n_rep`` replicates per cell; a strong lr effect, weak kernel effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for kernel, k_eff in (("AK", 0.0), ("GK", 0.01)):
        for lr, lr_eff in ((0.001, 0.0), (0.005, 0.08), (0.01, 0.05)):
            for rep in range(n_rep):
                dice = 0.7 + k_eff + lr_eff + rng.normal(0, 0.02)
                rows.append({"kernel": kernel, "lr": lr, "pair": rep, "dice": dice})
    return pd.DataFrame(rows)


def hand_anova(df: pd.DataFrame, a: str, b: str, y: str) -> dict[str, tuple[float, int]]:
    """Two-way ANOVA sums of squares and degrees of freedom by the textbook formulas (balanced)."""
    grand = df[y].mean()
    levels_a, levels_b = sorted(df[a].unique()), sorted(df[b].unique())
    n_rep = len(df) // (len(levels_a) * len(levels_b))
    mean_a = df.groupby(a)[y].mean()
    mean_b = df.groupby(b)[y].mean()
    mean_ab = df.groupby([a, b])[y].mean()
    ss_a = len(levels_b) * n_rep * np.sum((mean_a - grand) ** 2)
    ss_b = len(levels_a) * n_rep * np.sum((mean_b - grand) ** 2)
    ss_ab = n_rep * sum(
        (mean_ab[(i, j)] - mean_a[i] - mean_b[j] + grand) ** 2 for i in levels_a for j in levels_b
    )
    cell_mean = df.groupby([a, b])[y].transform("mean")
    ss_e = np.sum((df[y] - cell_mean) ** 2)
    df_a, df_b = len(levels_a) - 1, len(levels_b) - 1
    return {
        a: (ss_a, df_a),
        b: (ss_b, df_b),
        f"{a}:{b}": (ss_ab, df_a * df_b),
        "Residual": (ss_e, len(df) - len(levels_a) * len(levels_b)),
    }


def test_two_way_anova_matches_hand_computation() -> None:
    df = balanced_design()
    table = anova_table(df, "dice", ["kernel", "lr"], ALPHA)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table.index) == ["kernel", "lr", "kernel:lr", "Residual"]
    expected = hand_anova(df, "kernel", "lr", "dice")
    ss_e, df_e = expected["Residual"]
    for term, (ss, dof) in expected.items():
        assert table.loc[term, "sum_sq"] == pytest.approx(ss, rel=1e-9)
        assert table.loc[term, "df"] == dof
        assert table.loc[term, "mean_sq"] == pytest.approx(ss / dof, rel=1e-9)
        if term == "Residual":
            continue
        f_value = (ss / dof) / (ss_e / df_e)
        assert table.loc[term, "F"] == pytest.approx(f_value, rel=1e-9)
        assert table.loc[term, "p"] == pytest.approx(sps.f.sf(f_value, dof, df_e), rel=1e-7)
        assert table.loc[term, "F_crit"] == pytest.approx(sps.f.ppf(1 - ALPHA, dof, df_e), rel=1e-9)
        assert table.loc[term, "partial_eta_sq"] == pytest.approx(ss / (ss + ss_e), rel=1e-9)
        assert table.loc[term, "significant"] == (f_value > table.loc[term, "F_crit"])
    assert table.loc["lr", "significant"]
    assert not table.loc["Residual", "significant"] and np.isnan(table.loc["Residual", "F"])
    total = np.sum((df["dice"] - df["dice"].mean()) ** 2)
    assert table["sum_sq"].sum() == pytest.approx(total, rel=1e-9)  # balanced: SS partition is exact


def test_run_anova_tukey_on_significant_main_effect() -> None:
    result = run_anova(balanced_design(), "dice", ["kernel", "lr"], ALPHA)
    assert result.table is not None and "balanced, 3 pairs per cell" in result.message
    assert "lr" in result.significant_terms and "lr" in result.tukey
    tukey = result.tukey["lr"]
    assert list(tukey.columns) == ["group1", "group2", "meandiff", "p_adj", "lower", "upper", "reject"]
    assert len(tukey) == 3  # three lr levels -> three pairs
    row = tukey[(tukey.group1 == "0.001") & (tukey.group2 == "0.005")].iloc[0]
    df = balanced_design()
    expected = df[df.lr == 0.005].dice.mean() - df[df.lr == 0.001].dice.mean()
    assert row.meandiff == pytest.approx(expected, abs=1e-4) and row.reject
    assert set(result.tukey) <= {t for t in result.significant_terms if ":" not in t}
    summary = pairwise_tukeyhsd(df.dice, df.lr.astype(str), alpha=ALPHA).summary().data[1:]  # rounded to 4 digits
    np.testing.assert_allclose(tukey[["meandiff", "p_adj", "lower", "upper"]], [r[2:6] for r in summary], atol=1e-4)
    assert [(r[0], r[1]) for r in summary] == list(zip(tukey.group1, tukey.group2, strict=True))


def test_three_factor_term_names() -> None:
    df = pd.concat([balanced_design(2, seed).assign(epochs=e) for seed, e in ((1, 5), (2, 10))], ignore_index=True)
    table = anova_table(df, "dice", ["kernel", "lr", "epochs"], ALPHA)
    assert list(table.index) == [
        "kernel", "lr", "epochs", "kernel:lr", "kernel:epochs", "lr:epochs", "kernel:lr:epochs", "Residual"
    ]
    assert table.loc["Residual", "df"] == len(df) - 12


@pytest.mark.parametrize(
    ("df", "needle"),
    [
        (balanced_design(n_rep=1), "too few replicates"),
        (balanced_design().assign(dice=0.8), "constant"),
        (balanced_design().assign(kernel="AK"), "single level"),
        (balanced_design().query("not (kernel == 'AK' and lr == 0.01)"), "incomplete design"),
        (balanced_design().assign(dice=lambda d: d.groupby(["kernel", "lr"]).dice.transform("mean")), "residual sum"),
    ],
    ids=["one-replicate", "constant", "single-level", "missing-cell", "zero-residual"],
)
def test_degenerate_designs_give_messages(df: pd.DataFrame, needle: str) -> None:
    result = run_anova(df, "dice", ["kernel", "lr"], ALPHA)
    assert result.table is None and result.tukey == {} and result.significant_terms == []
    assert needle in result.message


def test_nan_responses_are_left_out_and_said() -> None:
    df = balanced_design()
    df.loc[0, "dice"] = np.nan
    result = run_anova(df, "dice", ["kernel", "lr"], ALPHA)
    assert result.n_obs == len(df) - 1 and "unbalanced" in result.message and "1 row(s)" in result.message


def test_bad_arguments_raise_input_error() -> None:
    with pytest.raises(InputError, match="alpha"):
        anova_table(balanced_design(), "dice", ["kernel", "lr"], 1.5)
    with pytest.raises(InputError, match="epochs"):
        run_anova(balanced_design(), "dice", ["kernel", "epochs"], ALPHA)


def _study_metrics(tmp_path: Path) -> Path:
    """A metrics.csv with a gridded method (kernel x lr) and a method without grid factors."""
    grid = balanced_design().assign(method="nodeo", neg_jac_ratio=0.0)
    other = pd.DataFrame({"method": "demons", "pair": range(3), "dice": [0.6, 0.62, 0.61], "neg_jac_ratio": 0.0})
    path = tmp_path / "metrics.csv"
    pd.concat([grid, other], ignore_index=True).to_csv(path, index=False)
    return path


def test_run_anova_study_files(tmp_path: Path) -> None:
    """The seed reproduction's model: pairs as replicates, Tukey HSD on significant main effects."""
    out = tmp_path / "anova"
    run_anova_study(_study_metrics(tmp_path), ["dice", "neg_jac_ratio"], ["kernel", "lr"], ALPHA, out, model="independent")
    summary = json.loads((out / "anova.json").read_text())
    assert summary["selection"]["methods"] == ["nodeo"] and summary["selection"]["excluded_methods"] == ["demons"]
    assert "excluded: demons" in summary["selection"]["note"] and summary["n_rows"] == 18
    dice = summary["responses"]["dice"]
    assert "lr" in dice["significant_terms"] and dice["table"] == "dice.csv"
    table = pd.read_csv(out / "dice.csv")
    assert list(table.columns) == ["term", *TABLE_COLUMNS]
    assert (out / "tukey_dice_lr.csv").is_file() and (out / "interaction_dice.png").is_file()
    assert (out / "interaction_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flat = summary["responses"]["neg_jac_ratio"]
    assert flat["table"] is None and "constant" in flat["message"] and not (out / "neg_jac_ratio.csv").exists()


def test_run_anova_study_unknown_factor_names_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"epochs not found; available columns: kernel, lr, pair, dice"):
        run_anova_study(_study_metrics(tmp_path), ["dice"], ["epochs"], ALPHA, tmp_path / "anova")
    assert not (tmp_path / "anova").exists()
    with pytest.raises(InputError, match="method are not numeric"):
        run_anova_study(_study_metrics(tmp_path), ["dice", "method"], ["kernel"], ALPHA, tmp_path / "anova")
    assert not (tmp_path / "anova").exists()
