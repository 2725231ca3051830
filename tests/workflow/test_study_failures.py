"""Failures are results, in real Snakemake runs: one subject on another grid fails its
registrations (recorded, not retried), the study still writes its tables, statistics and report
(failures on the first screen) and says so on its last line; after the subject's file is fixed, a
rerun redoes exactly the failed jobs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from registration_core.core.io import Image, save_image

from support.paths import REPO_ROOT


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "snakemake"
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "snakemake"]
    return subprocess.run(
        [*command, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "study.yaml"), "--cores", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )


def blob(shape: tuple[int, int], shift: float) -> Image:
    """A 2D image of two Gaussian blobs (2 mm voxels), moved by ``shift`` voxels along i."""
    grid = np.stack(np.meshgrid(*(np.arange(float(n)) for n in shape), indexing="ij"))
    centres = np.array([[22.0 + shift, 24.0], [40.0 + shift, 38.0]])
    data = sum(np.exp(-((grid - c[:, None, None]) ** 2).sum(axis=0) / (2 * 5.0**2)) for c in centres)
    return Image(data.astype(np.float32), np.diag([2.0, 2.0, 1.0, 1.0]))


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_a_failing_subject_is_reported_and_redone_once_fixed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for subject, shape, shift in (("a", (64, 64), 0.0), ("b", (64, 64), 2.0), ("c", (64, 70), 1.0), ("d", (64, 64), -2.0)):
        (data / subject).mkdir(parents=True)
        save_image(blob(shape, shift), data / subject / "image.nii.gz")
    config = {
        "study": "fail",
        "datasets": {"blobs": {"adapter": "folder", "path": "data", "image": "{subject}/image.nii.gz"}},
        "pairs": {"atlases": ["a"], "moving": "rest"},
        "methods": {"demons": {"params": {"iterations": [10], "shrink_factors": [1], "smoothing_sigmas": [0.0]},
                               "grid": {"field_sigma": [1.0, 2.0]}}},
        "anova": {"responses": ["ncc_after"]},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    run = snakemake(tmp_path, "--retries", "2")
    assert run.returncode == 0, run.stdout[-4000:]
    # deterministic failures are not retried: one registration job per pair and grid point
    assert run.stdout.count("rule register:") == 6 and "Trying to restart" not in run.stdout
    assert run.stdout.rstrip().splitlines()[-1] == (
        "study fail: 2 of 6 registrations failed (register; table: results/fail/failures.csv); "
        "report: reports/fail/index.html"
    )
    results = tmp_path / "results" / "fail"
    failures = pd.read_csv(results / "failures.csv")
    assert list(failures["moving"]) == ["c", "c"] and set(failures["stage"]) == {"register"}
    assert failures["reason"].str.contains("grid differs").all()
    for log in failures["log"]:
        assert "error: " in (tmp_path / log).read_text()
    failed_files = [p.name for p in (results / "reg" / "demons").glob("*/a__c/*") if not p.name.startswith(".")]
    assert failed_files == ["failure.json", "failure.json"]  # beside Snakemake's .snakemake_timestamp
    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 4 and set(metrics["moving"]) == {"b", "d"}
    assert set(pd.read_csv(results / "summary.csv")["n_failed"]) == {1}
    assert (results / "anova" / "anova.json").is_file()
    html = (tmp_path / "reports" / "fail" / "index.html").read_text()
    first_screen = html[:html.index("<section")]
    assert '<div id="failures">' in first_screen and "2 of 6 registrations failed" in first_screen
    assert "<b>2</b> failed" in first_screen
    assert len(list((tmp_path / "logs" / "fail" / "benchmarks" / "register").rglob("*.tsv"))) == 6

    # nothing changed: the failures stand (no job to run)
    dry = snakemake(tmp_path, "--dry-run")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]

    # the subject's file fixed: exactly its jobs run again, then the study tables
    save_image(blob((64, 64), 1.0), data / "c" / "image.nii.gz")
    dry = snakemake(tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stdout[-3000:]
    counts = job_counts(dry.stdout)
    assert {rule: counts.get(rule, 0) for rule in ("prepare", "qc", "register", "evaluate", "aggregate", "report")} == {
        "prepare": 1, "qc": 1, "register": 2, "evaluate": 2, "aggregate": 1, "report": 1,
    }
    rerun = snakemake(tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert rerun.stdout.rstrip().splitlines()[-1].startswith("study fail: none of 6 registrations failed")
    assert pd.read_csv(results / "failures.csv").empty and len(pd.read_csv(results / "metrics.csv")) == 6
