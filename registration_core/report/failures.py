"""The failed jobs on the report's first screen: how many registrations failed, and a table of
them (job, stage, one-line reason, log file), from the study's ``failures.csv``
(:func:`registration_core.evaluation.aggregate.aggregate_study`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from registration_core.errors import InputError
from registration_core.evaluation.aggregate import FAILURE_COLUMNS
from registration_core.layout import table_file
from registration_core.report import markup

MAX_ROWS = 50
"""Failures listed on the page; the rest are in failures.csv."""
SHOWN = ("method", "grid_id", "atlas", "moving", "stage", "reason", "log")


def read_failures(study_dir: Path) -> pd.DataFrame:
    """failures.csv of ``results/<study>`` (no rows when absent: a study aggregated before failures
    were recorded); InputError naming the file when unreadable or without its columns."""
    path = table_file(study_dir, "failures")
    if not path.is_file():
        return pd.DataFrame(columns=list(SHOWN))
    try:
        failures = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as a CSV table ({exc})".splitlines()[0]) from exc
    missing = [c for c in ("method", "grid_id", "atlas", "moving", *FAILURE_COLUMNS) if c not in failures.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return failures


def failures_block(failures: pd.DataFrame, n_jobs: int, table_path: Path) -> str:
    """HTML for the first screen: nothing when no job failed, else a warning with the count (by
    stage) and the first :data:`MAX_ROWS` failures."""
    if failures.empty:
        return ""
    stages = ", ".join(f"{n} at {stage}" for stage, n in failures["stage"].value_counts().sort_index().items())
    text = (
        f"{len(failures)} of {n_jobs} registrations failed ({stages}) for a reason of their input; every table, "
        f"figure and statistic below is made of the {n_jobs - len(failures)} that succeeded."
    )
    more = ""
    if len(failures) > MAX_ROWS:
        more = markup.paragraph(f"The first {MAX_ROWS} are listed; all {len(failures)} are in {table_path}.")
    return (
        '<div id="failures">' + markup.note(text, "warning")
        + markup.table(failures.loc[:, list(SHOWN)].head(MAX_ROWS)) + more + "</div>"
    )
