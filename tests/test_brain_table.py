"""benchmarks/brain_3d_table.py: the headline table's summary and paired comparisons on a hand-made
metrics table (orientation b - a against NODEO default, wins, DSC30)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from support.benchmarks import benchmark


def brain_table() -> ModuleType:
    return benchmark("brain_3d_table")


def metrics_table() -> pd.DataFrame:
    """Four pairs; NODEO default at 0.70 + 0.01 k, demons 0.02 lower on three pairs and higher on one."""
    rows = []
    for k in range(4):
        base = 0.70 + 0.01 * k
        for method, grid_id, dice in (("nodeo", "preset~default", base), ("demons", "default", base + (0.03 if k == 3 else -0.02))):
            row = {"method": method, "grid_id": grid_id, "atlas": "a", "moving": f"m{k}", "dice_mean": dice,
                   "dice_mean_before": 0.4, "dice_all": dice - 0.1}
            row.update({column: 1.0 for column in ("hd95_mean", "neg_jac_pct_nodeo", "neg_jac_sum_nodeo", "sdlogj_l2r",
                                                   "runtime_s", "peak_rss_mb")})
            rows.append(row)
    table = pd.DataFrame(rows)
    module = brain_table()
    table["condition"] = table.apply(module.condition, axis=1)
    return table


def test_conditions_name_grid_points_only_where_there_are_some() -> None:
    assert set(metrics_table()["condition"]) == {"nodeo · preset~default", "demons"}


def test_paired_against_nodeo_default_is_b_minus_a() -> None:
    table = brain_table().paired_table(metrics_table(), "dice_mean")
    [row] = table.to_dict("records")
    assert (row["a"], row["b"], row["n_pairs"], row["b_ahead_on"]) == ("nodeo · preset~default", "demons", 4, 1)
    assert row["mean_diff"] == pytest.approx((-0.02 * 3 + 0.03) / 4)
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]


def test_summary_has_the_robustness_quantile_and_the_spread() -> None:
    summary = brain_table().summary_table(metrics_table()).set_index("condition")
    nodeo = summary.loc["nodeo · preset~default"]
    assert nodeo["dice_mean"] == pytest.approx(0.715) and nodeo["pairs"] == 4
    assert nodeo["dsc30"] == pytest.approx(np.quantile([0.70, 0.71, 0.72, 0.73], 0.3))
    assert nodeo["dice_mean_sd"] == pytest.approx(np.std([0.70, 0.71, 0.72, 0.73], ddof=1))
    assert "| `nodeo · preset~default` | 4 | 0.400 |" in brain_table().markdown(summary.reset_index(), brain_table().paired_table(metrics_table(), "dice_mean"))
