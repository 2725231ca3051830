"""A study whose every job failed for a reason of its input still gets its tables, an empty
statistics summary and a report that shows the failures on its first screen."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from registration_core.core.io import write_json
from registration_core.evaluation.aggregate import aggregate_study
from registration_core.evaluation.stats import run_anova_study
from registration_core.failures import failure_record
from registration_core.layout import ANOVA_SUMMARY
from registration_core.report import build_report

JOB_COLUMNS = ("study", "dataset", "method", "grid_id", "atlas", "moving", "reg_dir", "metrics", "log")


def test_every_job_failed(tmp_path: Path) -> None:
    study_dir = tmp_path / "results" / "s"
    rows = []
    for moving in ("b", "c"):
        job = {"study": "s", "dataset": "d", "method": "demons", "grid_id": "field_sigma~1.0", "atlas": "a", "moving": moving}
        reg_dir = study_dir / "reg" / "demons" / "field_sigma~1.0" / f"a__{moving}"
        metrics = study_dir / "eval" / "demons" / "field_sigma~1.0" / f"a__{moving}.json"
        write_json(failure_record("register", f"{moving}.nii.gz: its grid differs", f"demons/field_sigma~1.0/a__{moving}",
                                  f"logs/s/register/{moving}.log"), metrics)
        rows.append({**job, "reg_dir": str(reg_dir), "metrics": str(metrics), "log": str(reg_dir / "log.json"),
                     "field_sigma": "1.0"})
    with open(study_dir / "jobs.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, [*JOB_COLUMNS, "field_sigma"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)

    aggregate_study(study_dir / "jobs.tsv", study_dir)
    assert pd.read_csv(study_dir / "metrics.csv").empty
    failures = pd.read_csv(study_dir / "failures.csv")
    assert list(failures["moving"]) == ["b", "c"] and set(failures["stage"]) == {"register"}
    assert list(failures["log"]) == ["logs/s/register/b.log", "logs/s/register/c.log"]

    run_anova_study(study_dir / "metrics.csv", ["dice_mean"], ["field_sigma"], 0.05, study_dir / "anova")
    summary = json.loads((study_dir / "anova" / ANOVA_SUMMARY).read_text())
    assert summary["n_rows"] == 0 and summary["responses"] == {}

    config = tmp_path / "config.yaml"
    config.write_text("study: s\n")
    build_report(study_dir, config, tmp_path / "reports" / "s" / "index.html")
    html = (tmp_path / "reports" / "s" / "index.html").read_text()
    first_screen = html[:html.index("<section")]
    assert "2 of 2 registrations failed (2 at register)" in first_screen and "its grid differs" in first_screen
    assert '<section id="config">' in html and '<section id="summary">' not in html
