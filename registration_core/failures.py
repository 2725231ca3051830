"""Failures are results: a registration or evaluation job that fails for a reason of its input
records the failure and ends with exit status 0, so that the study goes on and reports what
succeeded beside what failed.

The failure record is a JSON object ``{"failure": {...}}`` (key :data:`registration_core.layout.FAILURE_KEY`):

* ``stage``: ``register`` or ``evaluate`` (the job that met the bad input);
* ``reason``: the one-line message of the :class:`~registration_core.errors.InputError`;
* ``job``: ``method``, ``grid_id``, ``atlas``, ``moving`` (from ``--job-id``; empty without it);
* ``log``: the job's log file (``--job-log``), where the whole story is;
* ``time``: when it failed (UTC, ISO 8601).

Where it is written (``--record-failures``): ``register --out DIR`` writes ``DIR/failure.json``
(and no other file: a previous run's outputs are removed); ``evaluate --out FILE`` writes the
record as ``FILE``, the evaluation's result. ``evaluate`` of a registration folder that holds a
failure record writes that record (stage ``register``) as its result, so the study tables see
every failed job exactly once. Other errors (a crash, running out of memory or time, a signal)
end with a non-zero status as before: Snakemake retries those with more resources.

Snakemake reruns a recorded failure like any finished job whose inputs changed: fixing the input
(a new file, another preprocessing step, ``align``) gives the failed jobs newer inputs or other
settings, so they and only they run again; without a change a rerun leaves them (deterministic
failures are not retried).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from registration_core.core.io import write_json
from registration_core.errors import InputError
from registration_core.layout import FAILURE_KEY, REG_FILES, reg_file

STAGES = ("register", "evaluate")
JOB_FIELDS = ("method", "grid_id", "atlas", "moving")
"""The identity of a job in a failure record (and in the jobs table)."""


class UpstreamFailure(InputError):
    """The registration an evaluation reads failed for a reason of its input; ``record`` is its
    failure record (``{"failure": {...}}``)."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


def parse_job_id(job_id: str | None) -> dict[str, str]:
    """``method/grid_id/atlas__moving`` -> the four job fields (empty strings without an id);
    InputError for another shape."""
    if not job_id:
        return dict.fromkeys(JOB_FIELDS, "")
    parts = job_id.split("/")
    if len(parts) != 3 or parts[2].count("__") != 1 or not all(parts):
        raise InputError(f"--job-id {job_id!r}: expected method/grid_id/atlas__moving")
    atlas, moving = parts[2].split("__")
    return dict(zip(JOB_FIELDS, (parts[0], parts[1], atlas, moving), strict=True))


def job_id(job: Mapping[str, Any]) -> str:
    """``method/grid_id/atlas__moving`` of a job (a jobs-table row, a record's ``job``)."""
    return f"{job['method']}/{job['grid_id']}/{job['atlas']}__{job['moving']}"


def failure_record(stage: str, reason: str, job: str | None = None, log: str | Path | None = None) -> dict[str, Any]:
    """A failure record (see the module docstring); ``reason`` becomes one line."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    line = " ".join(part.strip() for part in str(reason).splitlines() if part.strip())
    return {
        FAILURE_KEY: {
            "stage": stage,
            "reason": line,
            "job": parse_job_id(job),
            "log": None if log is None else str(log),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    }


def failure_of(content: Any) -> dict[str, Any] | None:
    """The failure (the record's inner object) when ``content`` (a JSON result) is a failure
    record, else None."""
    if isinstance(content, dict) and set(content) == {FAILURE_KEY} and isinstance(content[FAILURE_KEY], dict):
        return content[FAILURE_KEY]
    return None


def read_failure(path: str | Path) -> dict[str, Any] | None:
    """The failure recorded in the JSON file ``path``; None when the file is missing, is not
    JSON or holds a result."""
    try:
        return failure_of(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def registration_failure(reg_dir: str | Path) -> dict[str, Any] | None:
    """The failure record (``{"failure": ...}``) of a registration folder, None when it has none."""
    path = reg_file(reg_dir, "failure")
    failure = read_failure(path)
    return None if failure is None else {FAILURE_KEY: failure}


def check_registration(displacement: str | Path) -> None:
    """Raise :class:`UpstreamFailure` when the registration folder of ``displacement`` (the field an
    evaluation reads) holds a failure record instead of the field."""
    displacement = Path(displacement)
    if displacement.exists():
        return
    record = registration_failure(displacement.parent)
    if record is not None:
        raise UpstreamFailure(f"{displacement.parent}: the registration failed: {record[FAILURE_KEY]['reason']}", record)


def write_registration_failure(out_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``out_dir/failure.json``, after removing a previous run's outputs (the
    folder then holds the failure alone); returns the record's path."""
    from registration_core.core.outputs import remove_stale_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_outputs(out_dir, REG_FILES.values(), REG_FILES["log"])
    path = reg_file(out_dir, "failure")
    write_json(dict(record), path)
    return path


# -- command line ---------------------------------------------------------------------------------


def add_failure_options(parser: argparse.ArgumentParser) -> None:
    """``--record-failures``, ``--job-id`` and ``--job-log`` of a command whose input errors can be
    recorded (``register``, ``evaluate``)."""
    parser.add_argument(
        "--record-failures", action="store_true",
        help="record an input error as this job's result (register: OUT/failure.json; evaluate: the --out file) "
        "and exit 0; other errors still exit non-zero",
    )
    parser.add_argument("--job-id", help="the job, method/grid_id/atlas__moving, for the failure record")
    parser.add_argument("--job-log", help="the job's log file, for the failure record")


def record_input_error(args: argparse.Namespace, error: InputError) -> int:
    """Record ``error`` of command ``args.command`` (``register`` or ``evaluate`` with
    ``--record-failures``) as its result and say where on stderr; returns the exit status: 0, or
    2 (input) / 1 (write) when the record itself cannot be written."""
    try:
        if isinstance(error, UpstreamFailure):
            record = error.record
        else:
            record = failure_record(args.command, str(error), args.job_id, args.job_log)
        if args.command == "register":
            where = write_registration_failure(args.out, record)
        else:
            write_json(record, args.out)
            where = Path(args.out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: the failure record was not written: {exc}", file=sys.stderr)
        return 1
    print(f"recorded as this job's result: {where}", file=sys.stderr)
    return 0


# -- a study's failures -----------------------------------------------------------------------------


def study_failures(metrics_paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failures recorded as the evaluation results ``metrics_paths`` (one per job; every failed
    registration is passed on to its evaluation); missing files are not failures."""
    failures = []
    for path in metrics_paths:
        failure = read_failure(path)
        if failure is not None:
            failures.append(failure)
    return failures


def outcome_line(study: str, n_jobs: int, failures: list[dict[str, Any]], failures_table: str, report: str,
                 finished: bool) -> str:
    """The last line of a workflow run: how many registrations failed and where the report is.

    ``finished``: Snakemake ran every job (its ``onsuccess``); False after a job error (``onerror``).
    """
    if failures:
        stages = sorted({f["stage"] for f in failures})
        failed = f"{len(failures)} of {n_jobs} registrations failed ({', '.join(stages)}; table: {failures_table})"
    else:
        failed = f"none of {n_jobs} registrations failed"
    if finished:
        return f"study {study}: {failed}; report: {report}"
    where = f"report of an earlier run: {report}" if Path(report).is_file() else "no report yet"
    return f"study {study}: a job stopped with an error (see above); {failed}; {where}"


def print_outcome(study: Any, finished: bool, stream: Any = None) -> str:
    """Print (to stderr) and return :func:`outcome_line` of a planned study
    (:class:`registration_core.study.plan.Study`): the workflow's ``onsuccess`` / ``onerror``."""
    failures = study_failures(job.path("metrics") for job in study.jobs)
    line = outcome_line(study.name, len(study.jobs), failures, study.path("failures_table"), study.path("report"), finished)
    print(line, file=sys.stderr if stream is None else stream, flush=True)
    return line
