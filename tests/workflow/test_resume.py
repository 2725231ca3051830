"""Interruption and resume: Snakemake killed with SIGKILL mid-study, then rerun.

Finished registrations are not redone, unfinished ones are, and the final metrics equal those of
an uninterrupted run of the same config (NODEO is deterministic on the CPU for a fixed seed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import SNAKEFILE, demo_study, run_snakemake, snakemake_command

GRID = {"smoothing_kernel": ["AK", "GK"], "lr": [0.005, 0.01]}
ITERATIONS = 25
TIMING_COLUMNS = ("runtime_s", "peak_rss_mb")


def _metrics(root: Path, study: str) -> pd.DataFrame:
    table = pd.read_csv(root / "results" / study / "metrics.csv")
    keep = [c for c in table.columns if not c.startswith(TIMING_COLUMNS)]
    return table[keep].sort_values(["grid_id", "moving"]).reset_index(drop=True)


def _registration_logs(root: Path, study: str) -> dict[Path, int]:
    """log.json of every registration written so far -> its modification time."""
    return {p: p.stat().st_mtime_ns for p in (root / "results" / study / "reg").glob("*/*/*/log.json")}


def _evaluated(root: Path, study: str) -> list[Path]:
    """Registrations whose evaluation finished: Snakemake has surely recorded them as complete."""
    results = root / "results" / study
    return [
        results / "reg" / e.parent.parent.name / e.parent.name / e.stem / "log.json"
        for e in (results / "eval").glob("*/*/*.json")
    ]


@pytest.mark.slow
def test_killed_study_resumes_without_redoing_finished_jobs(tmp_path: Path) -> None:
    config = demo_study("resume", n_subjects=3, grid=GRID, iterations=ITERATIONS)
    n_registrations = 2 * 4

    reference_dir = tmp_path / "uninterrupted"
    reference_dir.mkdir()
    reference = run_snakemake(reference_dir, config)
    assert reference.returncode == 0, reference.stdout[-3000:]

    work = tmp_path / "interrupted"
    work.mkdir()
    config_file = work / "study.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [*snakemake_command(), "--snakefile", str(SNAKEFILE), "--directory", str(work),
               "--configfile", str(config_file), "--cores", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_evaluated(work, "resume")) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the job it is running, without any clean-up
    proc.wait()
    logs = _registration_logs(work, "resume")
    finished = {path: logs[path] for path in _evaluated(work, "resume")}
    assert 3 <= len(finished) < n_registrations, "the kill should land in the middle of the study"

    unlock = run_snakemake(work, config, "--unlock")
    assert unlock.returncode == 0, unlock.stdout[-3000:]
    rerun = run_snakemake(work, config)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    after = _registration_logs(work, "resume")
    assert len(after) == n_registrations
    redone = [str(path) for path, mtime in finished.items() if after[path] != mtime]
    assert not redone, f"finished registrations were redone: {redone}\n{rerun.stdout[-3000:]}"
    pd.testing.assert_frame_equal(_metrics(work, "resume"), _metrics(reference_dir, "resume"), check_exact=True)
