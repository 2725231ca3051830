"""The command line as the workflow calls it: outputs, conventions and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from registration_core.core.io import Image, load_image, save_image


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registration_core", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2D pair (moving = fixed translated by 2 voxels along j) with labels, on a 1.5 x 1 mm grid."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random((72, 80)), 3.0).astype(np.float32)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    labels = np.zeros((72, 80), np.int32)
    labels[20:40, 20:45] = 1
    labels[45:60, 30:60] = 2
    affine = np.diag([1.5, 1.0, 1.0, 1.0])
    files = {
        "fixed": root / "fixed.nii.gz",
        "moving": root / "moving.nii.gz",
        "fixed_labels": root / "fixed_labels.nii.gz",
        "moving_labels": root / "moving_labels.nii.gz",
    }
    save_image(Image(fixed, affine), files["fixed"])
    save_image(Image(ndimage.shift(fixed, (0, 2), order=1, mode="nearest"), affine), files["moving"])
    save_image(Image(labels, affine), files["fixed_labels"])
    save_image(Image(np.roll(labels, 2, axis=1), affine), files["moving_labels"])
    return files


def register_args(pair: dict[str, Path], out: Path, *params: str) -> list[str | Path]:
    args: list[str | Path] = [
        "register", "--method", "nodeo", "--fixed", pair["fixed"], "--moving", pair["moving"],
        "--fixed-labels", pair["fixed_labels"], "--moving-labels", pair["moving_labels"], "--out", out,
    ]
    for p in params:
        args += ["--param", p]
    return args


def test_register_then_evaluate(pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "job"
    proc = run_cli(*register_args(pair, out, "iterations=60", "lr=0.01", "ncc_window=9", "seed=3"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "displacement.nii.gz", "log.json", "warped.nii.gz", "warped_labels.nii.gz"
    ]
    log = json.loads((out / "log.json").read_text())
    assert log["method"] == "nodeo" and log["params"]["iterations"] == 60 and log["seed"] == 3
    assert log["device"] == "cpu" and log["runtime_s"] > 0 and log["peak_rss_mb"] > 0
    assert len(log["loss_history"]) == 61 and log["best_iteration"] is not None
    assert {"python", "torch", "torchdiffeq", "registration_core"} <= set(log["versions"])
    warped = load_image(out / "warped.nii.gz")
    np.testing.assert_allclose(warped.affine, load_image(pair["fixed"]).affine)
    # the displacement is in mm on the fixed grid: ~ +2 voxels along j = +2 mm (spacing 1 mm along j);
    # RAS +y is LPS -y, so the ITK vector's second component is about -2
    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 2 and field.GetSpacing() == (1.5, 1.0)
    vectors = sitk.GetArrayFromImage(field)  # (j, i, 2)
    assert np.median(vectors[25:-25, 25:-25, 1]) == pytest.approx(-2.0, abs=0.5)

    metrics_path = tmp_path / "metrics.json"
    proc = run_cli(
        "evaluate", "--fixed-labels", pair["fixed_labels"], "--warped-labels", out / "warped_labels.nii.gz",
        "--displacement", out / "displacement.nii.gz", "--moving-labels", pair["moving_labels"],
        "--labels", "1,2", "--out", metrics_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(metrics_path.read_text())
    assert metrics["dice_mean"] > metrics["dice_mean_before"] + 0.05
    assert metrics["neg_jac_ratio"] == 0.0
    assert {"dice_per_label", "hd95_mean", "neg_jac_sum", "sdlogj"} <= set(metrics)


@pytest.mark.parametrize(
    "params,message",
    [
        (["foo=1"], "unknown parameter 'foo'"),
        (["lr=-0.1"], "parameter 'lr' must be a number > 0"),
        (["iterations=0"], "parameter 'iterations' must be an integer >= 1"),
        (["smoothing_kernel=XK"], "parameter 'smoothing_kernel' must be one of AK, GK"),
        (["iterations"], "not of the form key=value"),
    ],
)
def test_bad_parameters_fail_cleanly(pair: dict[str, Path], tmp_path: Path, params: list[str], message: str) -> None:
    out = tmp_path / "job"
    proc = run_cli(*register_args(pair, out, *params))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_inputs_fail_cleanly(pair: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((72, 60)).astype(np.float32), np.eye(4)), small)
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((72, 80, 8)).astype(np.float32), np.eye(4)), volume)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(pair["fixed"].read_bytes()[:200])
    cases = {
        "missing": (tmp_path / "nope.nii.gz", "nope.nii.gz"),
        "truncated": (broken, "broken.nii.gz"),
        "other grid": (small, "differs from"),
        "other dimension": (volume, "is 3D but"),
    }
    for moving, message in cases.values():
        out = tmp_path / "job"
        proc = run_cli(
            "register", "--method", "nodeo", "--fixed", pair["fixed"], "--moving", moving, "--out", out
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not out.exists()
    proc = run_cli("register", "--method", "elastix9", "--fixed", pair["fixed"], "--moving", pair["moving"],
                   "--out", tmp_path / "job")
    assert proc.returncode == 2 and "unknown method 'elastix9'" in proc.stderr


def test_methods_lists_every_method_with_its_parameters() -> None:
    proc = run_cli("methods")
    assert proc.returncode == 0, proc.stderr
    for name in ("nodeo (presets: reference, default, pyramid)", "demons", "bspline", "affine"):
        assert name in proc.stdout
    assert "  lr = 0.005  [a number > 0]" in proc.stdout
    assert run_cli("methods", "nope").returncode == 2
