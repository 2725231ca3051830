"""Failures are results, in real Snakemake runs: one subject whose landmarks do not correspond to the
atlas's (3 points against 4: an input error only the registration meets, the plan reads no
landmarks) fails its registrations (recorded, not retried), the study still writes its tables,
statistics and report (failures on the first screen) and says so on its last line; after the
subject's file is fixed, a rerun redoes exactly the failed jobs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from registration_core.core.io import Image, save_image, save_landmarks

from support.paths import REPO_ROOT


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "snakemake"
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "snakemake"]
    return subprocess.run(
        [*command, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "study.yaml"), "--cores", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )


CENTRES = np.array([[20.0, 22.0], [40.0, 24.0], [24.0, 42.0], [42.0, 40.0]])


def blob_subject(folder: Path, shift: float, n_points: int = 4) -> None:
    """A 2D image (64 x 64, 2 mm) of four Gaussian blobs moved by ``shift`` voxels along i, and the
    first ``n_points`` blob centres as its landmarks."""
    grid = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij"))
    centres = CENTRES + np.array([shift, 0.0])
    data = sum(np.exp(-((grid - c[:, None, None]) ** 2).sum(axis=0) / (2 * 4.0**2)) for c in centres)
    image = Image(data.astype(np.float32), np.diag([2.0, 2.0, 1.0, 1.0]))
    folder.mkdir(parents=True, exist_ok=True)
    save_image(image, folder / "image.nii.gz")
    save_landmarks(centres[:n_points], image, folder / "points.csv")


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_a_failing_subject_is_reported_and_redone_once_fixed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for subject, shift, n_points in (("a", 0.0, 4), ("b", 2.0, 4), ("c", 1.0, 3), ("d", -2.0, 4)):
        blob_subject(data / subject, shift, n_points)
    config = {
        "study": "fail",
        "datasets": {"blobs": {"adapter": "folder", "path": "data", "image": "{subject}/image.nii.gz",
                               "landmarks": "{subject}/points.csv"}},
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
    assert failures["reason"].str.contains("has 3 landmarks but").all()
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
    blob_subject(data / "c", 1.0, 4)
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
