"""The Snakemake workflow, run through the real Snakemake command line in temporary folders.

End to end on a tiny demo study and on a labels-free dataset with landmarks and pre-alignment,
dry runs of a 4,050-job study, of a learned method's training and of the example studies, a
real-data 2D study on ../shared/data/oasis-trt, the linter, and config errors reported before
anything runs.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from registration_core.core.io import Image, load_image, save_image, save_landmarks

from support.paths import REPO_ROOT

SNAKEFILE = REPO_ROOT / "Snakefile"
REPORT_SECTIONS = ("config", "summary", "dice", "runtime", "loss", "anova", "examples", "provenance")


def snakemake_command() -> list[str]:
    """The snakemake executable next to this interpreter (the project's venv), else ``python -m snakemake``."""
    executable = Path(sys.executable).parent / "snakemake"
    return [str(executable)] if executable.is_file() else [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, config: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the workflow on ``config`` (written to ``workdir/study.yaml``) in ``workdir``; the
    result's ``stdout`` holds both output streams (Snakemake logs to either)."""
    config_file = workdir / "study.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        *snakemake_command(), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(config_file), "--cores", "2", "--retries", "0", *args,
    ]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a Snakemake run or dry run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def prepared_jobs(counts: dict[str, int]) -> int:
    """Jobs that write prepared subjects: the last preprocessing step (rules ``<step>_final...``)
    or ``prepare`` (subjects without steps)."""
    return sum(n for rule, n in counts.items() if rule.startswith("prepare") or "_final" in rule)


def demo_study(name: str, n_subjects: int, grid: dict, iterations: int) -> dict:
    """A demo-adapter study at a coarse 3 mm spacing (2D middle axial slice of 66x78 voxels; NODEO
    needs at least 64 voxels per axis)."""
    return {
        "study": name,
        "datasets": {
            "demo": {
                "adapter": "demo", "n_subjects": n_subjects, "spacing_mm": 3.0,
                "preprocess": [{"step": "slice", "axis": 2, "index": "middle"}, {"step": "normalize", "mode": "minmax"}],
            }
        },
        "pairs": {"atlases": ["demo-00"], "moving": "rest"},
        "methods": {"nodeo": {"params": {"iterations": iterations, "seed": 0}, "grid": grid}},
        "anova": {"responses": ["dice_mean", "neg_jac_ratio"]},
    }


def fake_folder_dataset(root: Path, n_subjects: int) -> list[str]:
    """``n_subjects`` subjects with empty image and label files (enough for planning and dry runs)."""
    subjects = [f"s{i:02d}" for i in range(1, n_subjects + 1)]
    for subject in subjects:
        (root / subject).mkdir(parents=True)
        for name in ("t1.nii.gz", "labels.nii.gz"):
            (root / subject / name).write_bytes(b"")
    return subjects


def assert_report(html_path: Path) -> str:
    """The report exists, has every section and references nothing outside itself."""
    html = html_path.read_text()
    for section in REPORT_SECTIONS:
        assert f'<section id="{section}">' in html, section
    assert not re.search(r'(src|href)="(https?:)?//', html)
    return html


@pytest.mark.slow
def test_tiny_demo_study_end_to_end(tmp_path: Path) -> None:
    config = demo_study("tiny", n_subjects=3, grid={"smoothing_kernel": ["AK", "GK"]}, iterations=3)
    start = time.perf_counter()
    result = run_snakemake(tmp_path, config)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["register"] == 2 * 2 and counts["evaluate"] == 4 and counts["demo_subject"] == 3
    assert counts["slice"] == counts["normalize_final"] == 3 and "prepare" not in counts
    results = tmp_path / "results" / "tiny"
    # one job (and log) per step; the intermediate stage is temporary, the prepared files stay
    assert (tmp_path / "logs" / "tiny" / "preprocess" / "demo-01" / "1-slice.log").is_file()
    assert (tmp_path / "logs" / "tiny" / "preprocess" / "demo-01" / "final-normalize.log").is_file()
    assert not list(results.glob("prep/*/stages/*/*.nii.gz"))
    prepared = load_image(results / "prep" / "demo-01" / "image.nii.gz")
    assert prepared.ndim == 2 and prepared.data.min() == 0.0 and prepared.data.max() == 1.0
    assert len(list(results.glob("reg/nodeo/*/demo-00__*/displacement.nii.gz"))) == 4

    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 4
    assert sorted(metrics["smoothing_kernel"]) == ["AK", "AK", "GK", "GK"]
    assert metrics["dice_mean"].between(0, 1).all()
    assert len(pd.read_csv(results / "summary.csv")) == 2
    jobs = pd.read_csv(results / "jobs.tsv", sep="\t")
    assert list(jobs["metrics"]) == list(metrics["metrics"])

    anova = json.loads((results / "anova" / "anova.json").read_text())
    assert anova["factors"] == ["smoothing_kernel"]
    table = pd.read_csv(results / "anova" / "dice_mean.csv")
    assert "smoothing_kernel" in set(table["term"])
    assert {"term", "F", "p", "significant"} <= set(table.columns)
    assert anova["model"] == "repeated"

    assert_report(tmp_path / "reports" / "tiny" / "index.html")
    assert (tmp_path / "logs" / "tiny" / "register").is_dir()
    resolved = yaml.safe_load((results / "config.yaml").read_text())
    assert resolved["anova"]["factors"] == ["smoothing_kernel"] and resolved["metrics"] == {"labels": "all"}

    rerun = run_snakemake(tmp_path, config, "--dry-run")
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout
    # a fixed parameter is not part of the result paths: changing it must still redo the registrations
    changed = copy.deepcopy(config)
    changed["methods"]["nodeo"]["params"]["seed"] = 1
    rerun = run_snakemake(tmp_path, changed, "--dry-run")
    assert rerun.returncode == 0 and job_counts(rerun.stdout)["register"] == 4, rerun.stdout[-3000:]
    changed = copy.deepcopy(config)
    changed["datasets"]["demo"]["preprocess"][1]["mode"] = "zscore"
    rerun = run_snakemake(tmp_path, changed, "--dry-run")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    # the changed last step reruns, and with it the (temporary, deleted) stage it reads
    assert job_counts(rerun.stdout)["normalize_final"] == job_counts(rerun.stdout)["slice"] == 3

    report = run_snakemake(tmp_path, config, "--report", str(tmp_path / "snakemake-report.zip"))
    assert report.returncode == 0, report.stdout[-4000:]
    assert (tmp_path / "snakemake-report.zip").stat().st_size > 0
    print(f"tiny demo study: {elapsed:.1f} s")


@pytest.mark.slow
def test_dry_run_of_4050_registrations(tmp_path: Path) -> None:
    subjects = fake_folder_dataset(tmp_path / "data", 50)
    config = {
        "study": "large",
        "datasets": {"brains": {"adapter": "folder", "path": "data", "image": "{subject}/t1.nii.gz", "labels": "{subject}/labels.nii.gz"}},
        "pairs": {"atlases": [subjects[i] for i in (0, 9, 19, 29, 39)], "moving": "rest"},
        "methods": {"nodeo": {"grid": {"smoothing_kernel": ["AK", "GK"], "lr": [0.001, 0.005, 0.01], "iterations": [5, 10, 20]}}},
    }
    start = time.perf_counter()
    result = run_snakemake(tmp_path, config, "--dry-run", "--quiet", "rules")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["register"] == 5 * 45 * 18 == 4050
    assert counts["evaluate"] == 4050 and counts["prepare"] == 50 and counts["aggregate"] == 1
    assert "jobs per rule: prepare 50, qc 50, register 4050, evaluate 4050" in result.stdout
    print(f"dry run of 4,050 registrations: {elapsed:.1f} s")


@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_2d_study(tmp_path: Path, shared_data: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "config" / "studies" / "oasis-trt-2d.yaml").read_text())
    dataset = config["datasets"]["oasis-trt"]
    dataset["path"] = str(shared_data / "oasis-trt")
    dataset["subjects"] = ["sub-01", "sub-02", "sub-03"]
    config["study"] = "oasis-2d"
    config["methods"] = {"nodeo": {"params": {"iterations": 10, "seed": 0}}}
    del config["anova"]
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:]
    metrics = pd.read_csv(tmp_path / "results" / "oasis-2d" / "metrics.csv")
    assert list(metrics["moving"]) == ["sub-02", "sub-03"] and set(metrics["grid_id"]) == {"default"}
    assert metrics["dice_mean"].between(0, 1).all() and metrics["dice_mean_before"].between(0, 1).all()
    assert (metrics["n_labels"] > 20).all()
    assert not (tmp_path / "results" / "oasis-2d" / "anova").exists()
    assert_report(tmp_path / "reports" / "oasis-2d" / "index.html")


def test_lint_is_clean(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, demo_study("lint", 3, {}, 1), "--lint")
    assert result.returncode == 0 and "Congratulations" in result.stdout, result.stdout


def test_bad_config_fails_before_running_with_the_key(tmp_path: Path) -> None:
    config = demo_study("bad", 3, {"lr": [0.01, -1]}, 1)
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode != 0
    assert "config key methods.nodeo.grid.lr: method 'nodeo': parameter 'lr' must be a number > 0, got -1" in result.stdout
    assert not (tmp_path / "results").exists()


def blob_subjects(root: Path, shifts: dict[str, tuple[float, float]]) -> None:
    """2D images (64 x 64 at 2 mm) of four Gaussian blobs moved by ``shifts`` (voxels) per subject,
    each with the blob centres as landmarks (``<subject>/image.nii.gz``, ``<subject>/points.csv``)."""
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    grid = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij"))
    centres = np.array([[20.0, 22.0], [40.0, 24.0], [24.0, 42.0], [42.0, 40.0]])
    for subject, shift in shifts.items():
        points = centres + np.asarray(shift)
        data = sum(np.exp(-((grid - p[:, None, None]) ** 2).sum(axis=0) / (2 * 4.0**2)) for p in points)
        reference = Image(data=data.astype(np.float32), affine=affine)
        (root / subject).mkdir(parents=True)
        save_image(reference, root / subject / "image.nii.gz")
        save_landmarks(points, reference, root / subject / "points.csv")


@pytest.mark.slow
def test_labels_free_dataset_with_landmarks_and_alignment(tmp_path: Path) -> None:
    blob_subjects(tmp_path / "data", {"a": (0.0, 0.0), "b": (3.0, -2.0), "c": (-2.0, 2.5)})
    config = {
        "study": "points",
        "datasets": {
            "blobs": {
                "adapter": "folder", "path": "data", "image": "{subject}/image.nii.gz", "landmarks": "{subject}/points.csv",
                "preprocess": [{"step": "normalize", "mode": "minmax"}],
                "align": {"transform": "rigid", "shrink_factors": [1], "iterations": 30},
            }
        },
        "pairs": {"atlases": ["a"], "moving": "rest"},
        "methods": {"demons": {"params": {"iterations": "20", "shrink_factors": "1", "smoothing_sigmas": "0"}}},
        "anova": {"factors": []},
    }
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["normalize_final"] == 3 and counts["qc"] == 3 and counts["align"] == 2 and counts["register"] == 2
    results = tmp_path / "results" / "points"
    assert (results / "aligned" / "a__b" / "landmarks.csv").is_file()
    assert not list(results.glob("reg/demons/default/*/warped_labels.nii.gz"))
    metrics = pd.read_csv(results / "metrics.csv")
    assert list(metrics["moving"]) == ["b", "c"]
    # the rigid pre-alignment removes the 3-4 mm shifts almost entirely (landmarks carried along);
    # demons must not undo it (it may move them by a fraction of a voxel either way)
    assert (metrics["tre_before_mm"] < 1.0).all() and (metrics["tre_mean_mm"] < 0.5).all()
    assert "dice_mean" not in metrics or metrics["dice_mean"].isna().all()
    assert (tmp_path / "results" / "points" / "qc" / "b.png").stat().st_size > 0
    assert (tmp_path / "reports" / "points" / "index.html").is_file()


@pytest.mark.slow
def test_learned_method_is_trained_then_registers(tmp_path: Path) -> None:
    config = demo_study("learned", n_subjects=4, grid={}, iterations=3)
    config["datasets"]["demo"]["preprocess"].insert(1, {"step": "crop_pad", "shape": [64, 64]})
    config["pairs"] = {"atlases": ["demo-00"], "moving": ["demo-01"]}
    config["methods"] = {}
    config["methods"]["voxelmorph"] = {
        "train": {"subjects": ["demo-02", "demo-03"]},
        "params": {"steps": 4, "val_every": 2, "checkpoint_every": 2, "enc_features": "4,8", "dec_features": "8,8,4"},
        "grid": {"io_steps": [0, 2]},
    }
    config["anova"] = {"factors": []}
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["train"] == 1 and counts["register"] == 2 and prepared_jobs(counts) == 4
    model = tmp_path / "results" / "learned" / "train" / "voxelmorph" / "default" / "model.pt"
    assert model.stat().st_size > 0
    log = json.loads((model.parent / "log.json").read_text())
    assert log["n_train"] == 2 and log["history"]
    for grid_id in ("io_steps~0", "io_steps~2"):
        reg_log = json.loads((tmp_path / "results" / "learned" / "reg" / "voxelmorph" / grid_id / "demo-00__demo-01" / "log.json").read_text())
        assert reg_log["params"]["checkpoint"] == "results/learned/train/voxelmorph/default/model.pt"
    metrics = pd.read_csv(tmp_path / "results" / "learned" / "metrics.csv")
    assert list(metrics["grid_id"]) == ["io_steps~0", "io_steps~2"] and metrics["dice_mean"].between(0, 1).all()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["oasis-trt", "lung-ct", "fundus", "learned-2d"])
def test_example_study_dry_run(tmp_path: Path, shared_data: Path, name: str) -> None:
    config = yaml.safe_load((REPO_ROOT / "config" / "studies" / f"{name}.yaml").read_text())
    for dataset in config["datasets"].values():
        if "path" in dataset:
            dataset["path"] = str(shared_data / Path(dataset["path"]).name)
    result = run_snakemake(tmp_path, config, "--dry-run", "--quiet", "rules")
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["register"] == counts["evaluate"] > 0 and counts["qc"] == prepared_jobs(counts)


@pytest.mark.slow
def test_known_truth_pairs_are_made_and_scored(tmp_path: Path) -> None:
    config = demo_study("truth", n_subjects=1 + 1, grid={}, iterations=3)
    config["datasets"]["moved"] = {
        "adapter": "truth", "base": "demo", "subject": "demo-00", "motion": "single", "max_disp_mm": 6.0,
        "noise_std": 0.01, "n_pairs": 2, "seed": 3, "n_landmarks": 20,
    }
    config["pairs"] = {"dataset": "moved"}
    config["methods"] = {"demons": {"params": {"iterations": "30", "shrink_factors": "2x1", "smoothing_sigmas": "1x0"}}}
    config["anova"] = {"factors": []}
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["synth_pair"] == 2 and prepared_jobs(counts) == 1 and counts["register"] == 2
    results = tmp_path / "results" / "truth"
    assert (results / "truth" / "demo-00-m1" / "truth_displacement.nii.gz").is_file()
    metrics = pd.read_csv(results / "metrics.csv")
    assert list(metrics["moving"]) == ["demo-00-m0", "demo-00-m1"]
    # Without a mask the error against the true field counts the empty background too, where
    # demons is unconstrained: only the landmarks (in the brain) must improve.
    assert (metrics["tre_truth_before_mm"] > 0).all() and metrics["tre_truth_mm"].notna().all()
    assert (metrics["tre_mean_mm"] < metrics["tre_before_mm"]).all()
    assert (metrics["dice_mean"] > metrics["dice_mean_before"]).all()


@pytest.mark.slow
def test_fire_pictures_and_point_files_are_imported(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (tmp_path / "fire" / "Images").mkdir(parents=True)
    (tmp_path / "fire" / "Ground Truth").mkdir()
    rows, cols = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    centres = np.array([[20.0, 22.0], [40.0, 24.0], [24.0, 42.0], [42.0, 40.0]])  # (row, column)
    shift = np.array([2.0, -3.0])
    for image, points in ((1, centres), (2, centres + shift)):
        picture = sum(np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 4.0**2)) for r, c in points)
        plt.imsave(tmp_path / "fire" / "Images" / f"A01_{image}.jpg", picture, cmap="gray", vmin=0, vmax=1)
    lines = [f"{c} {r} {c + shift[1]} {r + shift[0]}" for r, c in centres]  # x = column, y = row
    (tmp_path / "fire" / "Ground Truth" / "control_points_A01_1_2.txt").write_text("\n".join(lines) + "\n")
    config = {
        "study": "fire",
        "datasets": {"fire": {"adapter": "fire", "path": "fire", "preprocess": [{"step": "normalize", "mode": "minmax"}]}},
        "pairs": {"dataset": "fire"},
        "methods": {"demons": {"params": {"iterations": "30", "shrink_factors": "2x1", "smoothing_sigmas": "1x0"}}},
        "anova": {"factors": []},
    }
    result = run_snakemake(tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["import_raw"] == 2 and counts["import_landmarks"] == 2 and counts["register"] == 1
    metrics = pd.read_csv(tmp_path / "results" / "fire" / "metrics.csv")
    assert list(zip(metrics["atlas"], metrics["moving"])) == [("A01-1", "A01-2")]
    assert metrics["tre_before_mm"].iloc[0] == pytest.approx(np.hypot(*shift), abs=1e-6)
    assert metrics["tre_mean_mm"].iloc[0] < metrics["tre_before_mm"].iloc[0]
