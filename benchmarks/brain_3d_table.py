"""The headline brain table: every method of ``config/studies/brain-3d-benchmark.yaml`` beside the
NODEO paper's OASIS figures.

Reads the study's own outputs (run it first: ``make benchmark-brain`` does both):
``results/<study>/metrics.csv`` (Dice on the study's label set, HD95, the Jacobian figures in the
paper's and in Learn2Reg's conventions, runtime, peak memory) and the registration folders, whose
warped labels it re-scores on every label of the atlas (for OASIS-TRT the full DKT set, about 100 labels;
:func:`registration_core.evaluation.metrics.dice_summary`). Paired comparisons of every method
against NODEO (``default``) are within pairs (:func:`registration_core.evaluation.paired.compare_conditions`),
Holm-corrected over those comparisons. Jobs that failed (``failures.csv``) are counted per method;
means are over the pairs a method registered.

    .venv/bin/python benchmarks/brain_3d_table.py [--config config/studies/brain-3d-benchmark.yaml]

Writes ``results/<study>/headline/`` (``table.csv``, ``paired.csv``, ``table.md``, the DKT metrics)
and prints the markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from registration_core.core.io import load_image
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary
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
    "dice_mean": "Dice (study labels)", "dice_all": "Dice (all labels)", "hd95_mean": "HD95 mm",
    "neg_jac_pct_nodeo": "r^D %", "neg_jac_sum_nodeo": "s^D", "sdlogj_l2r": "SDlogJ (L2R)",
    "runtime_s": "s / pair", "peak_rss_mb": "peak MB",
}


def condition(row: pd.Series) -> str:
    """``method`` or ``method · grid_id`` when the method has grid points."""
    return row["method"] if row["grid_id"] == "default" else f"{row['method']} · {row['grid_id']}"


def dice_all_labels(study: Study, jobs: pd.DataFrame) -> pd.Series:
    """Mean Dice over every label of the atlas, per job (index of ``jobs``); NaN where a registration
    folder has no warped labels or they cannot be scored (the reason is printed)."""
    values = []
    for _, job in jobs.iterrows():
        warped = study.base_dir / job["reg_dir"] / REG_FILES["warped_labels"]
        try:
            fixed = load_image(study.base_dir / study.pair_files(job["atlas"], job["moving"])["fixed_labels"], "labels")
            moving = load_image(warped, "labels")
            labels = [int(label) for label in np.unique(fixed.data) if label != 0]
            values.append(dice_summary(fixed.data, moving.data, labels)["mean"])
        except (InputError, OSError) as exc:
            print(f"{job['reg_dir']}: not scored on all labels ({exc})")
            values.append(np.nan)
    return pd.Series(values, index=jobs.index)


def summary_table(metrics: pd.DataFrame, failed: pd.Series | None = None) -> pd.DataFrame:
    """One row per condition: mean ± sd of each column of :data:`COLUMNS` over the pairs it
    registered, DSC30, pairs, and ``failed`` (jobs per condition in failures.csv)."""
    rows = []
    for name, group in metrics.groupby("condition", sort=False):
        row: dict[str, object] = {"condition": name, "pairs": int(group["dice_mean"].notna().sum()),
                                  "failed": 0 if failed is None else int(failed.get(name, 0))}
        for column in COLUMNS:
            values = group[column].dropna()
            row[column] = values.mean() if len(values) else np.nan
            row[f"{column}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row["dsc30"] = group["dice_mean"].quantile(LOWER_QUANTILE)
        row["dice_before"] = group["dice_mean_before"].mean()
        rows.append(row)
    return pd.DataFrame(rows).sort_values("dice_mean", ascending=False)


def paired_table(metrics: pd.DataFrame, response: str) -> pd.DataFrame:
    """Every condition against :data:`REFERENCE` on ``response``, within pairs (b - a, a = the
    reference), and on how many pairs each is ahead of it."""
    wide = metrics.pivot_table(index=["atlas", "moving"], columns="condition", values=response)
    table = compare_conditions(wide, alpha=0.05, seed=0, reference=REFERENCE)
    wins = {other: int((wide[other] > wide[REFERENCE]).sum()) for other in table["b"]}
    return table.assign(response=response, b_ahead_on=table["b"].map(wins))


def markdown(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The table and the paired comparisons as markdown."""
    head = ["method", "pairs", "Dice before", *COLUMNS.values(), "DSC30", "paper Dice", "paper r^D %", "paper s^D"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        pairs = str(row["pairs"]) + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [f"`{row['condition']}`", pairs, f"{row['dice_before']:.3f}"]
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


def failed_jobs(study_dir: Path) -> pd.Series:
    """Failed jobs per condition, from the study's failures.csv (empty when none failed)."""
    path = table_file(study_dir, "failures")
    if not path.is_file() or path.stat().st_size == 0:
        return pd.Series(dtype=int)
    failures = pd.read_csv(path, dtype={"grid_id": str})
    if failures.empty:
        return pd.Series(dtype=int)
    return failures.apply(condition, axis=1).value_counts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/studies/brain-3d-benchmark.yaml"))
    args = parser.parse_args()
    study = Study(load_config(args.config), Path.cwd(), check_files=False)
    study_dir = study.base_dir / study.path("metrics_table").rsplit("/", 1)[0]
    metrics = pd.read_csv(table_file(study_dir, "metrics"), dtype={"grid_id": str})
    metrics["condition"] = metrics.apply(condition, axis=1)
    metrics["dice_all"] = dice_all_labels(study, metrics)
    summary = summary_table(metrics, failed_jobs(study_dir))
    paired = pd.concat([paired_table(metrics, response) for response in ("dice_mean", "dice_all")], ignore_index=True)
    out_dir = study_dir / "headline"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "table.csv", index=False)
    paired.to_csv(out_dir / "paired.csv", index=False)
    text = markdown(summary, paired)
    (out_dir / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
