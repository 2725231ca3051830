"""Aggregate per-pair results of a study into tidy tables.

Inputs (see the project contract): ``results/<study>/jobs.tsv`` with one row per registration
job (columns ``study, dataset, method, grid_id, atlas, moving, reg_dir, metrics, log`` followed by
one column per grid factor, empty where a method lacks that factor), and for each job its
``metrics.json`` (written by ``evaluate``) and ``log.json`` (written by ``register``).
Relative paths in jobs.tsv are resolved against the current working directory (the workflow's
working directory, as Snakemake writes them).

Outputs (all written atomically):

* ``metrics.csv``: one row per job: the jobs columns, every scalar metric of metrics.json and
  ``runtime_s, peak_rss_mb, peak_cuda_mb, iterations, best_iteration, device`` from log.json;
* ``dice_per_label.csv``: long table, one row per job x label: job id columns, grid factors,
  ``label, dice, hd95, hd95_voxel, structure`` (FreeSurfer name of the label);
* ``summary.csv``: one row per method x grid point (grid factors as columns, sorted as in a
  paper's table): ``n_pairs`` and, per metric, ``<metric>_mean``, ``<metric>_std`` (sample
  standard deviation, ddof=1, over the pairs with a value) and ``<metric>_text`` ("mean ± std",
  rounded to the standard deviation's second significant digit), then the robustness quantiles
  ``<metric>_q30`` / ``<metric>_q70`` of the registry's robust metrics (:func:`robust_quantiles`);
* ``loss_curves.csv``: long table, one row per job x logged iteration: job id columns, grid
  factors, ``iteration`` and one column per loss term (union over methods);
* ``failures.csv``: one row per job whose registration or evaluation failed for a reason of its
  input (its result is a failure record, :mod:`registration_core.failures`): job id columns, grid
  factors, ``stage, reason, log, time``. The other tables hold the jobs that succeeded; summary.csv
  counts each grid point's failures (``n_failed``).

A metric, log field or loss term named like a jobs column (a grid factor ``iterations`` vs the
logged ``iterations``) gets the prefix ``metric_``, ``log_`` or ``loss_``; the factor keeps its name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from registration_core.core.io import atomic_path, read_json_object
from registration_core.errors import InputError
from registration_core.evaluation import registry
from registration_core.evaluation.labelsets import structure_name
from registration_core.failures import failure_of
from registration_core.layout import table_file

JOB_COLUMNS = ("study", "dataset", "method", "grid_id", "atlas", "moving", "reg_dir", "metrics", "log")
ID_COLUMNS = ("study", "dataset", "method", "grid_id", "atlas", "moving")
LOG_COLUMNS = ("runtime_s", "peak_rss_mb", "peak_cuda_mb", "iterations", "best_iteration", "device")
KNOWN_SCALAR_METRICS = registry.pair_metric_names()
"""metrics.json keys declared in :mod:`registration_core.evaluation.registry` (must be numbers or null)."""
PER_LABEL_METRICS = {"dice_per_label": "dice", "hd95_per_label": "hd95", "hd95_voxel_per_label": "hd95_voxel"}
SUMMARY_LOG_METRICS = ("runtime_s", "peak_rss_mb")
FAILURE_COLUMNS = ("stage", "reason", "log", "time")
"""Columns of failures.csv after the job id columns and grid factors."""


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` as CSV (no index) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    """Strings -> numbers when every non-empty entry parses as a number; empty strings -> NaN."""
    filled = column[column != ""]
    parsed = pd.to_numeric(filled, errors="coerce")
    if parsed.notna().all():
        return pd.to_numeric(column.replace("", np.nan))
    return column.replace("", np.nan)


def read_jobs(jobs_tsv: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read a study's jobs table.

    Returns:
        (jobs, factors): the table (id and path columns as strings; each grid factor column
        numeric when all its non-empty values are numbers, NaN where a method lacks it) and the
        names of the grid factor columns (those after the fixed job columns, in file order).

    Raises:
        InputError naming jobs.tsv: missing/unreadable file, missing columns, no rows,
        empty id/path cells, duplicate jobs.
    """
    jobs_tsv = Path(jobs_tsv)
    if not jobs_tsv.is_file():
        raise InputError(f"{jobs_tsv}: jobs table not found")
    try:
        jobs = pd.read_csv(jobs_tsv, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{jobs_tsv}: cannot read as a TSV table ({exc})".splitlines()[0]) from exc
    missing = [c for c in JOB_COLUMNS if c not in jobs.columns]
    if missing:
        raise InputError(f"{jobs_tsv}: missing column(s) {', '.join(missing)}; required: {', '.join(JOB_COLUMNS)}")
    if jobs.empty:
        raise InputError(f"{jobs_tsv}: has no jobs")
    for column in JOB_COLUMNS:
        empty = jobs.index[jobs[column] == ""]
        if len(empty):
            raise InputError(f"{jobs_tsv}: column {column!r} is empty in row {empty[0] + 2}")
    duplicated = jobs.duplicated(subset=["method", "grid_id", "atlas", "moving"])
    if duplicated.any():
        row = jobs[duplicated].iloc[0]
        raise InputError(f"{jobs_tsv}: job {job_name(row)} is listed more than once")
    factors = [c for c in jobs.columns if c not in JOB_COLUMNS]
    for factor in factors:
        jobs[factor] = _numeric_if_possible(jobs[factor])
    return jobs, factors


def job_name(job: pd.Series) -> str:
    """Human-readable job id ``method/grid_id/atlas__moving`` for messages and captions."""
    return f"{job['method']}/{job['grid_id']}/{job['atlas']}__{job['moving']}"


def _is_number(value: Any) -> bool:
    """True for JSON numbers (int/float, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: Any, path: Path, key: str) -> float:
    """A JSON number or null -> float (null -> NaN); InputError naming file and key otherwise."""
    if value is None:
        return math.nan
    if not _is_number(value):
        raise InputError(f"{path}: key {key!r} must be a number or null, found {value!r}")
    return float(value)


def scalar_metrics(metrics: dict[str, Any], path: Path) -> dict[str, float]:
    """The scalar entries of a metrics.json object (null -> NaN), in file order.

    Known scalar keys (e.g. ``dice_mean``) must be numbers or null; other keys are kept when
    they are numbers or null and ignored otherwise (lists such as ``labels_skipped``).
    """
    scalars = {}
    for key, value in metrics.items():
        if key in KNOWN_SCALAR_METRICS or value is None or _is_number(value):
            scalars[key] = _as_float(value, path, key)
    return scalars


def per_label_metrics(metrics: dict[str, Any], path: Path) -> pd.DataFrame:
    """Columns ``label`` (int), ``dice``, ``hd95``, ``hd95_voxel``, ``structure`` from the per-label keys.

    Labels are the union of the dictionaries' keys of :data:`PER_LABEL_METRICS` (each must be an
    integer label); a metric missing for a label is NaN. ``structure`` is the label's FreeSurfer
    name (:func:`registration_core.evaluation.labelsets.structure_name`). Returns an empty frame
    when no per-label key is present.
    """
    values: dict[int, dict[str, float]] = {}
    for key, column in PER_LABEL_METRICS.items():
        entries = metrics.get(key, {})
        if not isinstance(entries, dict):
            raise InputError(f"{path}: key {key!r} must map labels to numbers, found {type(entries).__name__}")
        for label_text, value in entries.items():
            try:
                label = int(label_text)
            except ValueError:
                raise InputError(f"{path}: key {key!r} has label {label_text!r}; labels must be integers") from None
            values.setdefault(label, {})[column] = _as_float(value, path, f"{key}.{label_text}")
    columns = ["label", *PER_LABEL_METRICS.values()]
    table = pd.DataFrame([{"label": label, **row} for label, row in sorted(values.items())], columns=columns)
    table = table.astype({"label": "int64", **{c: "float64" for c in PER_LABEL_METRICS.values()}})
    return table.assign(structure=[structure_name(label) for label in table["label"]])


def log_fields(log: dict[str, Any], path: Path) -> dict[str, Any]:
    """``runtime_s, peak_rss_mb, peak_cuda_mb, iterations, best_iteration, device`` from log.json.

    ``runtime_s`` must be a number; the memory fields numbers or null (null -> NaN;
    ``peak_cuda_mb`` may be absent on CPU); the iteration fields integers or null; ``device`` a string.
    """
    missing = [k for k in LOG_COLUMNS if k not in log and k != "peak_cuda_mb"]
    if missing:
        raise InputError(f"{path}: log is missing key(s) {', '.join(missing)}")
    if not _is_number(log["runtime_s"]):
        raise InputError(f"{path}: key 'runtime_s' must be a number, found {log['runtime_s']!r}")
    if not isinstance(log["device"], str):
        raise InputError(f"{path}: key 'device' must be a string, found {log['device']!r}")
    for key in ("iterations", "best_iteration"):
        if log[key] is not None and (not isinstance(log[key], int) or isinstance(log[key], bool)):
            raise InputError(f"{path}: key {key!r} must be an integer or null, found {log[key]!r}")
    fields: dict[str, Any] = {k: _as_float(log.get(k), path, k) for k in ("runtime_s", "peak_rss_mb", "peak_cuda_mb")}
    fields.update(iterations=log["iterations"], best_iteration=log["best_iteration"], device=log["device"])
    return fields


def loss_history(log: dict[str, Any], path: Path) -> pd.DataFrame:
    """``loss_history`` of a log.json as a frame: ``iteration`` (int) + one float column per term.

    Each entry must be an object with an integer ``iteration`` and numeric (or null) terms.
    A missing or empty history gives an empty frame (methods without an iterative optimiser).
    """
    history = log.get("loss_history", [])
    if not isinstance(history, list):
        raise InputError(f"{path}: key 'loss_history' must be a list, found {type(history).__name__}")
    rows = []
    for index, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("iteration"), int):
            raise InputError(f"{path}: loss_history[{index}] must be an object with an integer 'iteration'")
        terms = {k: _as_float(v, path, f"loss_history[{index}].{k}") for k, v in entry.items() if k != "iteration"}
        rows.append({"iteration": entry["iteration"], **terms})
    return pd.DataFrame(rows, columns=["iteration"] if not rows else None)


def _with_job(table: pd.DataFrame, job: pd.Series, columns: Iterable[str]) -> pd.DataFrame:
    """Prefix ``table`` with the job's ``columns`` (constant over its rows)."""
    prefix = pd.DataFrame({c: [job[c]] * len(table) for c in columns}, index=table.index)
    return pd.concat([prefix, table], axis=1)


@dataclass(frozen=True)
class StudyTables:
    """The aggregated tables of a study (see the module docstring) and the metrics to summarise."""

    metrics: pd.DataFrame
    summary_columns: list[str]
    dice_per_label: pd.DataFrame
    loss_curves: pd.DataFrame
    failures: pd.DataFrame


def _avoid(names: Iterable[str], taken: set[str], prefix: str) -> dict[str, str]:
    """Renames ``name -> prefix + name`` for the names already taken by other columns."""
    return {name: f"{prefix}{name}" for name in names if name in taken}


def collect(jobs: pd.DataFrame, factors: list[str]) -> StudyTables:
    """Read every job's metrics.json and log.json into the study tables.

    A metrics.json scalar, log field or loss term named like a jobs column (e.g. a grid factor
    ``iterations`` and the logged ``iterations``) is renamed ``metric_<name>``, ``log_<name>`` or
    ``loss_<name>``; the jobs column keeps its name.
    """
    keep = [*ID_COLUMNS, *factors]
    results, failure_rows = {}, []
    for index, job in jobs.iterrows():
        metrics = read_json_object(Path(job["metrics"]), f"metrics file of job {job_name(job)}")
        failure = failure_of(metrics)
        if failure is None:
            results[index] = metrics
        else:
            failure_rows.append({**{c: job[c] for c in keep}, **{c: failure.get(c) for c in FAILURE_COLUMNS}})
    failures = pd.DataFrame(failure_rows, columns=[*keep, *FAILURE_COLUMNS])
    jobs = jobs.loc[list(results)]
    if jobs.empty:
        return StudyTables(
            metrics=jobs.reindex(columns=[*jobs.columns, *LOG_COLUMNS]), summary_columns=[],
            dice_per_label=pd.DataFrame(columns=[*keep, "label", *PER_LABEL_METRICS.values(), "structure"]),
            loss_curves=pd.DataFrame(columns=[*keep, "iteration"]), failures=failures,
        )
    scalar_rows, log_rows, label_tables, histories = [], [], [], []
    for index, job in jobs.iterrows():
        metrics_path, log_path = Path(job["metrics"]), Path(job["log"])
        metrics = results[index]
        log = read_json_object(log_path, f"log file of job {job_name(job)}")
        scalar_rows.append(scalar_metrics(metrics, metrics_path))
        log_rows.append(log_fields(log, log_path))
        label_tables.append(_with_job(per_label_metrics(metrics, metrics_path), job, keep))
        histories.append((job, loss_history(log, log_path)))
    scalars = pd.DataFrame(scalar_rows, index=jobs.index)
    scalars = scalars.rename(columns=_avoid(scalars.columns, set(jobs.columns), "metric_"))
    log_names = {c: c for c in LOG_COLUMNS} | _avoid(LOG_COLUMNS, {*jobs.columns, *scalars.columns}, "log_")
    logs = pd.DataFrame(log_rows, index=jobs.index).astype({"iterations": "Int64", "best_iteration": "Int64"})
    logs = logs.rename(columns=log_names)
    loss_names = _avoid({c for _, h in histories for c in h.columns if c != "iteration"}, set(keep), "loss_")
    losses = [_with_job(history.rename(columns=loss_names), job, keep) for job, history in histories]
    summary_logs = [log_names[c] for c in SUMMARY_LOG_METRICS if logs[log_names[c]].notna().any()]
    return StudyTables(
        metrics=pd.concat([jobs, scalars, logs], axis=1),
        summary_columns=[*scalars.columns, *summary_logs],
        dice_per_label=pd.concat(label_tables, ignore_index=True),
        loss_curves=pd.concat(losses, ignore_index=True),
        failures=failures,
    )


def format_mean_std(mean: float, std: float, n: int, n_pairs: int) -> str:
    """Paper-style ``"mean ± std"``: both rounded at the std's second significant digit.

    A missing std (one value) gives ``"mean ± n/a"``; a zero std (below 1e-9 |mean|, i.e. float
    noise of identical values) gives ``"mean ± 0"`` with 4 significant digits.
    ``" (n=k)"`` is appended when only k of the group's n_pairs values are available.
    """
    if math.isnan(mean):
        text = "n/a"
    elif math.isnan(std):
        text = f"{mean:.4g} ± n/a"
    elif std <= 1e-9 * abs(mean):  # zero up to floating-point noise
        text = f"{mean:.4g} ± 0"
    else:
        decimals = min(max(1 - math.floor(math.log10(std)), 0), 12)
        text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return text if n == n_pairs else f"{text} (n={n})"


def robust_quantiles(group: pd.DataFrame, metric_names: list[str]) -> dict[str, float]:
    """Learn2Reg's robustness figures of one method x grid point, over its pairs.

    For each registered metric declared ``robust``: ``<metric>_q30`` (higher is better: the 30 %
    quantile of the per-pair values, Learn2Reg's DSC30) or ``<metric>_q70`` (lower is better: the
    70 % quantile, where the worst 30 % of pairs begin), numpy's linear interpolation; NaN without
    values. Learn2Reg's evaluation script takes the 0.3 quantile for HD95 too; the 0.7 quantile
    here follows the direction of the metric, as its paper describes the robustness score.
    """
    result = {}
    for name in metric_names:
        entry = registry.find(name)
        column = None if entry is None else entry.robust_column
        if column is not None:
            values = group[name].dropna().to_numpy(dtype=float)
            result[column] = float(np.quantile(values, entry.robust_quantile)) if len(values) else math.nan
    return result


def summarise(
    metrics: pd.DataFrame, factors: list[str], metric_names: list[str], failures: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Summary table: one row per method x grid_id with results (see the module docstring for the
    columns); ``n_failed`` counts the grid point's rows of ``failures`` (failures.csv).

    Rows are ordered by method (order of first appearance), then by the grid factors' values.
    """
    if metrics.empty:
        return pd.DataFrame(columns=["method", "grid_id", *factors, "n_pairs", "n_failed"])
    failed = (
        failures.groupby(["method", "grid_id"]).size() if failures is not None and not failures.empty
        else pd.Series(dtype=int)
    )
    rows = []
    for (method, grid_id), group in metrics.groupby(["method", "grid_id"], sort=False):
        row: dict[str, Any] = {"method": method, "grid_id": grid_id}
        row.update({f: group[f].iloc[0] for f in factors})
        row["n_pairs"] = len(group)
        row["n_failed"] = int(failed.get((method, grid_id), 0))
        for name in metric_names:
            values = group[name].dropna()
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
            row[f"{name}_text"] = format_mean_std(mean, std, len(values), len(group))
        row.update(robust_quantiles(group, metric_names))
        rows.append(row)
    summary = pd.DataFrame(rows)
    method_rank = {m: i for i, m in enumerate(dict.fromkeys(metrics["method"]))}
    summary["_rank"] = summary["method"].map(method_rank)
    summary = summary.sort_values(["_rank", *factors], na_position="last", kind="stable")
    return summary.drop(columns="_rank").reset_index(drop=True)


def aggregate_study(jobs_tsv: Path, out_dir: Path) -> None:
    """Write metrics.csv, dice_per_label.csv, summary.csv, loss_curves.csv and failures.csv of a
    study to ``out_dir`` (names from :data:`registration_core.layout.TABLE_FILES`).

    Raises:
        InputError naming the file: a bad jobs table, a missing or malformed metrics.json or
        log.json (nothing is written then).
    """
    jobs, factors = read_jobs(Path(jobs_tsv))
    tables = collect(jobs, factors)
    summary = summarise(tables.metrics, factors, tables.summary_columns, tables.failures)
    out_dir = Path(out_dir)
    write_table(tables.metrics, table_file(out_dir, "metrics"))
    write_table(tables.dice_per_label, table_file(out_dir, "dice"))
    write_table(summary, table_file(out_dir, "summary"))
    write_table(tables.loss_curves, table_file(out_dir, "loss"))
    write_table(tables.failures, table_file(out_dir, "failures"))
