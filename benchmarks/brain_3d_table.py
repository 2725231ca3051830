"""The headline brain table: every method of ``config/studies/brain-3d-benchmark.yaml`` beside the
NODEO paper's OASIS figures.

Reads the study's own outputs (run it first: ``make benchmark-brain`` does both):
``results/<study>/metrics.csv`` (Dice on the study's label set, HD95, the Jacobian figures in the
paper's and in Learn2Reg's conventions, runtime, peak memory) and the registration folders, whose
warped labels it re-scores on every label of the atlas (for OASIS-TRT the full DKT set, about 100 labels) with
:func:`registration_core.evaluation.evaluate.evaluate_pair`. Paired comparisons of every method
against NODEO (``default``) are within pairs (:func:`registration_core.evaluation.paired.compare_conditions`,
Holm over all pairwise comparisons of the conditions).

    .venv/bin/python benchmarks/brain_3d_table.py [--config config/studies/brain-3d-benchmark.yaml]

Writes ``results/<study>/headline/`` (``table.csv``, ``paired.csv``, ``table.md``, the DKT metrics)
and prints the markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from registration_core.evaluation.evaluate import evaluate_pair
from registration_core.evaluation.paired import compare_conditions
from registration_core.evaluation.registry import LOWER_QUANTILE
from registration_core.layout import REG_FILES, table_file
from registration_core.study.config import load_config
from registration_core.study.plan import Study

PAPER = {
    # Wu et al., CVPR 2022, Table 1 (OASIS, 28 labels, 1 mm, 5 atlases x the other subjects < 50):
    # Dice mean ± sd, r^D (% of voxels with det J <= 0), s^D. NODEO at lambda_J = 2.5 (our value).
    "nodeo · preset~reference": ("0.778 ± 0.026", "0.030", "34.183"),
    "syn": ("0.729 ± 0.109", "0.026", "0.005"),
    "demons": ("0.764 ± 0.098 (Log-Demons)", "0.121", "84.904"),
}
REFERENCE = "nodeo · preset~default"
COLUMNS = {
    "dice_mean": "Dice (paper's 28)", "dice_all": "Dice (all labels)", "hd95_mean": "HD95 mm",
    "neg_jac_pct_nodeo": "r^D %", "neg_jac_sum_nodeo": "s^D", "sdlogj_l2r": "SDlogJ (L2R)",
    "runtime_s": "s / pair", "peak_rss_mb": "peak MB",
}


def condition(row: pd.Series) -> str:
    """``method`` or ``method · grid_id`` when the method has grid points."""
    return row["method"] if row["grid_id"] in ("", "default", None) or pd.isna(row["grid_id"]) else f"{row['method']} · {row['grid_id']}"


def dice_all_labels(study: Study, jobs: pd.DataFrame, out_dir: Path) -> pd.Series:
    """Mean Dice over every label of the atlas, per job (index of ``jobs``); NaN for a failed job."""
    values = []
    for _, job in jobs.iterrows():
        reg_dir = study.base_dir / job["reg_dir"]
        warped = reg_dir / REG_FILES["warped_labels"]
        if not warped.is_file():
            values.append(np.nan)
            continue
        files = study.pair_files(job["atlas"], job["moving"])
        out = out_dir / "all-labels" / job["method"] / str(job["grid_id"]) / f"{job['atlas']}__{job['moving']}.json"
        result = evaluate_pair(
            study.base_dir / files["fixed_labels"], warped, reg_dir / REG_FILES["displacement"], None, out,
        )
        values.append(result["dice_mean"])
    return pd.Series(values, index=jobs.index)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: mean ± sd of each column of :data:`COLUMNS`, DSC30, pairs."""
    rows = []
    for name, group in metrics.groupby("condition", sort=False):
        row: dict[str, object] = {"condition": name, "pairs": int(group["dice_mean"].notna().sum())}
        for column in COLUMNS:
            values = group[column].dropna()
            row[column] = values.mean() if len(values) else np.nan
            row[f"{column}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row["dsc30"] = group["dice_mean"].quantile(LOWER_QUANTILE)
        row["dice_before"] = group["dice_mean_before"].mean()
        rows.append(row)
    return pd.DataFrame(rows).sort_values("dice_mean", ascending=False)


def paired_table(metrics: pd.DataFrame, response: str) -> pd.DataFrame:
    """Every condition against :data:`REFERENCE` on ``response``, within pairs."""
    wide = metrics.pivot_table(index=["atlas", "moving"], columns="condition", values=response)
    table = compare_conditions(wide, alpha=0.05, seed=0)
    table = table[(table["a"] == REFERENCE) | (table["b"] == REFERENCE)].copy()
    flip = table["b"] == REFERENCE
    table.loc[flip, ["a", "b", "mean_a", "mean_b"]] = table.loc[flip, ["b", "a", "mean_b", "mean_a"]].to_numpy()
    table.loc[flip, ["mean_diff", "ci_low", "ci_high"]] = -table.loc[flip, ["mean_diff", "ci_high", "ci_low"]].to_numpy()
    wins = {other: int((wide[other] > wide[REFERENCE]).sum()) for other in table["b"]}
    return table.assign(response=response, b_ahead_on=table["b"].map(wins)).reset_index(drop=True)


def markdown(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The table and the paired comparisons as markdown."""
    head = ["method", "pairs", "Dice before", *COLUMNS.values(), "DSC30", "paper Dice", "paper r^D %", "paper s^D"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        cells = [f"`{row['condition']}`", str(row["pairs"]), f"{row['dice_before']:.3f}"]
        for column in COLUMNS:
            digits = 1 if column in ("runtime_s", "peak_rss_mb") else 3
            sd = row[f"{column}_sd"]
            cells.append(f"{row[column]:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd:.{digits}f}"))
        cells += [f"{row['dsc30']:.3f}", *PAPER.get(row["condition"], ("", "", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired against `{REFERENCE}` (b - a, 95 % bootstrap CI, Holm-corrected p):", "",
              "| response | method (b) | b - a | 95 % CI | b ahead on | p t (Holm) | p Wilcoxon (Holm) |", "|---|---|---|---|---|---|---|"]
    for _, row in paired.iterrows():
        lines.append(
            f"| {row['response']} | `{row['b']}` | {row['mean_diff']:+.3f} | [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] | "
            f"{row['b_ahead_on']} / {row['n_pairs']} | {row['p_t_holm']:.3g} | {row['p_wilcoxon_holm']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/studies/brain-3d-benchmark.yaml"))
    args = parser.parse_args()
    study = Study(load_config(args.config), Path.cwd())
    study_dir = Path.cwd() / "results" / study.name
    out_dir = study_dir / "headline"
    metrics = pd.read_csv(table_file(study_dir, "metrics"), keep_default_na=True)
    metrics["grid_id"] = metrics["grid_id"].astype(str)
    metrics["condition"] = metrics.apply(condition, axis=1)
    metrics["dice_all"] = dice_all_labels(study, metrics, out_dir)
    summary = summary_table(metrics)
    paired = pd.concat([paired_table(metrics, response) for response in ("dice_mean", "dice_all")], ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "table.csv", index=False)
    paired.to_csv(out_dir / "paired.csv", index=False)
    text = markdown(summary, paired)
    (out_dir / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
