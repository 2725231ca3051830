"""Tests of registration_core.evaluation.aggregate on small fake-but-valid study files.

``write_study`` is also used by tests/test_report.py to build a tiny synthetic 2D study.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from registration_core.errors import InputError
from registration_core.evaluation.aggregate import aggregate_study, format_mean_std, read_jobs

STUDY = "tiny"
NODEO_GRID = [(lr, kernel) for lr in (0.001, 0.01) for kernel in ("AK", "GK")]
PAIRS = [("A1", "M1"), ("A1", "M2"), ("A1", "M3")]
N_ITERATIONS = 5


def fake_dice(method: str, lr: float | None, kernel: str | None, pair_index: int) -> tuple[float, float]:
    """Dice of labels 2 and 3 for a job: an additive design with pair effects (known means)."""
    base = 0.70 if method == "nodeo" else 0.60
    lr_effect = {0.001: 0.0, 0.01: 0.05, None: 0.0}[lr]
    kernel_effect = {"AK": 0.0, "GK": 0.02, None: 0.0}[kernel]
    pair_effect = (0.01, -0.02, 0.03)[pair_index]
    dice_2 = base + lr_effect + kernel_effect + pair_effect
    return dice_2, dice_2 + 0.1


def _grid_id(lr: float, kernel: str) -> str:
    return f"lr~{lr}__kernel~{kernel}"


def job_specs() -> list[dict]:
    """One dict per job: method, grid_id, lr, kernel (None for demons), pair index."""
    specs = [
        {"method": "nodeo", "grid_id": _grid_id(lr, kernel), "lr": lr, "kernel": kernel}
        for lr, kernel in NODEO_GRID
    ] + [{"method": "demons", "grid_id": "default", "lr": None, "kernel": None}]
    return [{**spec, "pair": p} for spec in specs for p in range(len(PAIRS))]


def write_study(root: Path, write_reg_dir=None) -> Path:
    """Write jobs.tsv plus each job's metrics.json and log.json under ``root``; return jobs.tsv.

    ``write_reg_dir(reg_dir, spec)``, when given, fills each job's registration folder
    (images for the report test); its return value (a dict) is merged into log.json "inputs".
    """
    rows = []
    for spec in job_specs():
        atlas, moving = PAIRS[spec["pair"]]
        reg_dir = root / "reg" / spec["method"] / spec["grid_id"] / f"{atlas}__{moving}"
        reg_dir.mkdir(parents=True)
        metrics_path = root / "eval" / spec["method"] / spec["grid_id"] / f"{atlas}__{moving}.json"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        dice_2, dice_3 = fake_dice(spec["method"], spec["lr"], spec["kernel"], spec["pair"])
        metrics = {
            "dice_mean": (dice_2 + dice_3) / 2,
            "dice_per_label": {"2": dice_2, "3": dice_3},
            "hd95_mean": 3.0 - dice_2,
            "hd95_per_label": {"2": 3.0 - dice_2, "3": 3.0 - dice_3},
            "neg_jac_ratio": 0.001 * (spec["pair"] + 1),
            "neg_jac_sum": 0.5,
            "sdlogj": 0.1,
            "n_labels": 2,
            "labels_skipped": [],
            "dice_mean_before": 0.5,
        }
        metrics_path.write_text(json.dumps(metrics))
        inputs = write_reg_dir(reg_dir, spec) if write_reg_dir else {}
        runtime = 10.0 + spec["pair"] if spec["method"] == "nodeo" else 2.0
        log = {
            "method": spec["method"],
            "params": {"lr": spec["lr"], "kernel": spec["kernel"]},
            "seed": 0,
            "device": "cpu",
            "runtime_s": runtime,
            "peak_rss_mb": 500.0,
            "peak_cuda_mb": None,
            "iterations": N_ITERATIONS,
            "best_iteration": N_ITERATIONS - 1,
            "best_criterion": 0.1,
            "loss_history": [
                {"iteration": i, "total": 1.0 / (i + 1), "similarity": 0.9 / (i + 1), "smoothness": 0.1 / (i + 1)}
                for i in range(N_ITERATIONS)
            ]
            if spec["method"] == "nodeo"
            else [],
            "versions": {"python": "3.11", "numpy": np.__version__, "registration_core": "0.1.0"},
            "inputs": {"fixed": f"{atlas}.nii.gz", "moving": f"{moving}.nii.gz", **inputs},
            "shape": [16, 16],
            "spacing_mm": [1.0, 1.0],
        }
        (reg_dir / "log.json").write_text(json.dumps(log))
        rows.append(
            {
                "study": STUDY,
                "dataset": "synthetic",
                "method": spec["method"],
                "grid_id": spec["grid_id"],
                "atlas": atlas,
                "moving": moving,
                "reg_dir": str(reg_dir),
                "metrics": str(metrics_path),
                "log": str(reg_dir / "log.json"),
                "lr": "" if spec["lr"] is None else spec["lr"],
                "kernel": spec["kernel"] or "",
            }
        )
    jobs_tsv = root / "jobs.tsv"
    pd.DataFrame(rows).to_csv(jobs_tsv, sep="\t", index=False)
    return jobs_tsv


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path)


def test_metrics_table_has_one_row_per_job(study: Path, tmp_path: Path) -> None:
    aggregate_study(study, tmp_path / "out")
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert len(metrics) == len(job_specs()) == 15
    expected = ["study", "dataset", "method", "grid_id", "atlas", "moving", "reg_dir", "metrics", "log", "lr", "kernel"]
    assert list(metrics.columns[: len(expected)]) == expected
    for column in ("dice_mean", "hd95_mean", "neg_jac_ratio", "sdlogj", "dice_mean_before", "runtime_s",
                   "peak_rss_mb", "iterations", "best_iteration", "device"):
        assert column in metrics.columns
    assert "labels_skipped" not in metrics.columns
    row = metrics.query("method == 'nodeo' and lr == 0.01 and kernel == 'GK' and moving == 'M3'")
    assert row["dice_mean"].item() == pytest.approx(0.70 + 0.05 + 0.02 + 0.03 + 0.05)
    assert row["runtime_s"].item() == 12.0
    assert metrics.loc[metrics.method == "demons", "lr"].isna().all()


def test_dice_per_label_and_loss_curves_are_long(study: Path, tmp_path: Path) -> None:
    aggregate_study(study, tmp_path / "out")
    dice = pd.read_csv(tmp_path / "out" / "dice_per_label.csv")
    assert len(dice) == 15 * 2
    assert set(dice["label"]) == {2, 3}
    assert {"method", "grid_id", "atlas", "moving", "lr", "kernel", "dice", "hd95"} <= set(dice.columns)
    np.testing.assert_allclose(dice["hd95"] + dice["dice"], 3.0)
    loss = pd.read_csv(tmp_path / "out" / "loss_curves.csv")
    assert len(loss) == 12 * N_ITERATIONS  # demons logs no loss history
    assert {"iteration", "total", "similarity", "smoothness", "method", "grid_id"} <= set(loss.columns)
    assert loss.groupby(["grid_id", "moving"])["total"].first().eq(1.0).all()


def test_summary_means_and_order(study: Path, tmp_path: Path) -> None:
    aggregate_study(study, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["method"]) == ["nodeo"] * 4 + ["demons"]
    assert list(summary["lr"].iloc[:4]) == [0.001, 0.001, 0.01, 0.01]
    assert list(summary["kernel"].iloc[:4]) == ["AK", "GK", "AK", "GK"]
    assert (summary["n_pairs"] == 3).all()
    # pair effects (0.01, -0.02, 0.03) average to 0.00667; dice_mean = dice_2 + 0.05
    pair_mean = np.mean([0.01, -0.02, 0.03])
    expected = [0.70 + lr_e + k_e + pair_mean + 0.05 for lr_e in (0, 0.05) for k_e in (0, 0.02)]
    np.testing.assert_allclose(summary["dice_mean_mean"].iloc[:4], expected)
    np.testing.assert_allclose(summary["dice_mean_std"], np.std([0.01, -0.02, 0.03], ddof=1))
    assert summary.loc[4, "runtime_s_mean"] == 2.0 and summary.loc[4, "runtime_s_std"] == 0
    assert summary.loc[0, "dice_mean_text"] == "0.757 ± 0.025"
    assert "runtime_s_text" in summary.columns and "device_mean" not in summary.columns


def test_factor_named_like_a_log_field(study: Path, tmp_path: Path) -> None:
    """A grid factor "iterations" keeps its name; the logged iteration count becomes log_iterations."""
    jobs = pd.read_csv(study, sep="\t", dtype=str, keep_default_na=False)
    jobs.rename(columns={"kernel": "iterations"}).replace({"AK": "20", "GK": "60"}).to_csv(study, sep="\t", index=False)
    aggregate_study(study, tmp_path / "out")
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert metrics.columns.is_unique
    assert set(metrics["iterations"].dropna()) == {20, 60} and (metrics["log_iterations"] == N_ITERATIONS).all()
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["iterations"].iloc[:4]) == [20, 60, 20, 60] and "runtime_s_mean" in summary.columns


def test_format_mean_std() -> None:
    assert format_mean_std(0.77912, 0.02613, 45, 45) == "0.779 ± 0.026"
    assert format_mean_std(123.4, 15.2, 3, 3) == "123 ± 15"
    assert format_mean_std(0.0003, 0.0001, 3, 3) == "0.00030 ± 0.00010"
    assert format_mean_std(0.5, float("nan"), 1, 1) == "0.5 ± n/a"
    assert format_mean_std(0.5, 0.1, 2, 3) == "0.50 ± 0.10 (n=2)"
    assert format_mean_std(0.1, 1.4e-17, 3, 3) == "0.1 ± 0"  # std of identical values, float noise


def test_jobs_factor_columns(study: Path) -> None:
    jobs, factors = read_jobs(study)
    assert factors == ["lr", "kernel"]
    assert pd.api.types.is_float_dtype(jobs["lr"]) and not pd.api.types.is_numeric_dtype(jobs["kernel"])
    assert jobs["atlas"].tolist()[0] == "A1" and jobs["lr"].isna().sum() == 3


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"dice_mean": "high"}', "dice_mean"),
    ],
)
def test_bad_metrics_file_names_it(study: Path, tmp_path: Path, content: str | None, needle: str) -> None:
    jobs = pd.read_csv(study, sep="\t")
    metrics_path = Path(jobs.loc[3, "metrics"])
    if content is None:
        metrics_path.unlink()
    else:
        metrics_path.write_text(content)
    with pytest.raises(InputError, match=needle) as error:
        aggregate_study(study, tmp_path / "out")
    assert str(metrics_path) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_bad_log_file_names_it(study: Path, tmp_path: Path) -> None:
    log_path = Path(pd.read_csv(study, sep="\t").loc[0, "log"])
    log = json.loads(log_path.read_text())
    del log["runtime_s"]
    log_path.write_text(json.dumps(log))
    with pytest.raises(InputError, match="runtime_s") as error:
        aggregate_study(study, tmp_path / "out")
    assert str(log_path) in str(error.value)


def test_jobs_table_missing_column(tmp_path: Path) -> None:
    jobs_tsv = tmp_path / "jobs.tsv"
    jobs_tsv.write_text("study\tmethod\nx\tnodeo\n")
    with pytest.raises(InputError, match="missing column"):
        aggregate_study(jobs_tsv, tmp_path / "out")
