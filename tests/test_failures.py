"""Failures are results: the failure record, the register / evaluate commands recording an input
error as their result (exit 0, nothing that looks finished), other errors still failing, and the
last line of a workflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registration_core.core.io import Image, save_image
from registration_core.errors import InputError
from registration_core.failures import (
    failure_of,
    failure_record,
    outcome_line,
    parse_job_id,
    read_failure,
    registration_failure,
    study_failures,
)
from registration_core.layout import REG_FILES, reg_file

from support.paths import REPO_ROOT


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registration_core", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def test_record_holds_stage_one_line_job_and_log() -> None:
    record = failure_record("register", "first\n  second ", "nodeo/lr~0.01/a__b", "logs/x.log")
    failure = failure_of(record)
    assert failure is not None and failure["stage"] == "register" and failure["reason"] == "first second"
    assert failure["job"] == {"method": "nodeo", "grid_id": "lr~0.01", "atlas": "a", "moving": "b"}
    assert failure["log"] == "logs/x.log" and failure["time"].endswith("+00:00")
    # results are not failures, even with a "failure" key beside metrics
    assert failure_of({"dice_mean": 0.5}) is None and failure_of({"failure": {}, "dice_mean": 0.5}) is None
    with pytest.raises(InputError, match="--job-id"):
        parse_job_id("nodeo/a__b")
    with pytest.raises(ValueError):
        failure_record("train", "x")


@pytest.fixture()
def mismatched_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    fixed, moving = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    save_image(Image(rng.random((64, 64)).astype(np.float32), np.eye(4)), fixed)
    save_image(Image(rng.random((64, 70)).astype(np.float32), np.eye(4)), moving)
    return fixed, moving


def test_register_records_an_input_error_and_evaluate_passes_it_on(tmp_path: Path, mismatched_pair) -> None:
    fixed, moving = mismatched_pair
    out = tmp_path / "reg"
    out.mkdir()
    for name in ("warped", "warped_labels", "displacement", "log"):  # a previous run's results
        reg_file(out, name).write_text("old")
    result = cli("register", "--method", "demons", "--fixed", fixed, "--moving", moving, "--out", out,
                 "--record-failures", "--job-id", "demons/default/a__b", "--job-log", tmp_path / "register.log")
    assert result.returncode == 0, result.stderr
    assert "error: " in result.stderr and "recorded as this job's result" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [REG_FILES["failure"]]
    record = registration_failure(out)
    assert record is not None and "grid differs" in record["failure"]["reason"]
    assert record["failure"]["log"] == str(tmp_path / "register.log")

    metrics = tmp_path / "metrics.json"
    result = cli("evaluate", "--displacement", reg_file(out, "displacement"), "--out", metrics, "--record-failures",
                 "--job-id", "demons/default/a__b", "--job-log", tmp_path / "evaluate.log")
    assert result.returncode == 0, result.stderr
    assert json.loads(metrics.read_text()) == record  # the registration's failure, stage register
    assert study_failures([metrics, tmp_path / "absent.json"]) == [record["failure"]]

    # without --record-failures the same input error is an error (exit 2, one line)
    again = cli("evaluate", "--displacement", reg_file(out, "displacement"), "--out", tmp_path / "m2.json")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "the registration failed" in again.stderr
    assert not (tmp_path / "m2.json").exists()


def test_evaluate_records_its_own_input_error(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    result = cli("evaluate", "--displacement", tmp_path / "missing.nii.gz", "--out", metrics, "--record-failures")
    assert result.returncode == 0, result.stderr
    failure = read_failure(metrics)
    assert failure is not None and failure["stage"] == "evaluate" and "give fixed labels" in failure["reason"]


def test_other_errors_are_not_recorded(tmp_path: Path, mismatched_pair) -> None:
    """A write that fails (the output folder is a file) is not an input error: exit 1, no record,
    so that Snakemake retries the job."""
    fixed, _ = mismatched_pair
    blocker = tmp_path / "reg"
    blocker.write_text("a file where the folder goes")
    result = cli("register", "--method", "demons", "--fixed", fixed, "--moving", fixed, "--out", blocker,
                 "--record-failures", "--param", "iterations=2", "--param", "shrink_factors=1",
                 "--param", "smoothing_sigmas=0")
    assert result.returncode not in (0, 2), result.stderr
    assert blocker.read_text() == "a file where the folder goes"


def test_outcome_line_counts_failures_and_names_the_report(tmp_path: Path) -> None:
    failures = [failure_of(failure_record("register", "bad")), failure_of(failure_record("evaluate", "worse"))]
    line = outcome_line("s", 8, failures, "results/s/failures.csv", "reports/s/index.html", finished=True)
    assert line == ("study s: 2 of 8 registrations failed (evaluate, register; table: results/s/failures.csv); "
                    "report: reports/s/index.html")
    assert "none of 8 registrations failed" in outcome_line("s", 8, [], "t", "r", finished=True)
    stopped = outcome_line("s", 8, [], "t", str(tmp_path / "index.html"), finished=False)
    assert "a job stopped with an error" in stopped and stopped.endswith("no report yet")
