"""ANTs SyN (antspyx): presets reproduce antspyx's recipes, known translations and affines are
recovered, our field warps exactly like ants.apply_transforms, identical repeats, the CLI's outputs,
and real pairs (a brain slice with a known deformation, the small lung CT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from registration_core.core.io import Image, load_displacement, load_image, save_image
from registration_core.core.spatial import warp_array
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary, jacobian_stats
from registration_core.methods import get_method

from support.baselines import (
    AFFINE_2D,
    affine_pair,
    body_mask,
    brain_subject_pair,
    brain_truth_pair,
    lung_truth_pair,
    shifted_pair,
)
from support.cli import run_cli

ants = pytest.importorskip("ants", reason="antspyx is not installed (pip install -c constraints.txt -e .[ants])")

FAST = {"iterations": "40x20x10"}
"""The SyN stage at every level (antspyx's default skips full resolution)."""


def register(fixed: Image, moving: Image, **raw):
    method = get_method("syn")
    return method.register(fixed, moving, method.resolve_params(raw))


def inside(disp_vox: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """Fixed voxels whose mapped point ``x + u(x)`` lies at least ``margin`` voxels inside the grid."""
    shape = disp_vox.shape[1:]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    mapped = grid + disp_vox
    return np.all([(mapped[d] >= margin) & (mapped[d] <= shape[d] - 1 - margin) for d in range(len(shape))], axis=0)


# ------------------------------------------------------------------ parameters


def test_presets_reproduce_antspyx_recipes() -> None:
    method = get_method("syn")
    syn = method.resolve_params({})
    assert syn["preset"] == "SyN" and syn["linear_stages"] == "affine" and syn["iterations"] == "40x20x0"
    cc = method.resolve_params({"preset": "SyNCC"})
    assert (cc["metric"], cc["cc_radius"], cc["grad_step"], cc["iterations"]) == ("cc", 4, 0.15, "2100x1200x1200x20")
    assert cc["linear_stages"] == "rigid_affine" and cc["affine_iterations"] == "1200x1200x100"
    assert method.resolve_params({"preset": "SyNOnly"})["linear_stages"] is None
    assert method.resolve_params({"preset": "ElasticSyN"})["affine_iterations"] == "2100x1200x200x0"
    assert method.resolve_params({"preset": "SyNCC", "cc_radius": "2"})["cc_radius"] == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"iterations": "40x20", "shrink_factors": "4x2x1"}, "one value per level"),
        ({"affine_shrink_factors": "4x0x1"}, "'affine_shrink_factors'"),
        ({"metric": "mi"}, "'metric'"),
        ({"grad_step": 0}, "'grad_step'"),
        ({"linear_stages": "similarity"}, "'linear_stages'"),
    ],
)
def test_bad_parameters_raise_one_line_naming_them(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        get_method("syn").resolve_params(raw)


def test_command_line_matches_antspyx_syn() -> None:
    from registration_core.methods.syn import registration_args

    args = registration_args(get_method("syn").resolve_params({}), 2, "F", "M", "out")
    text = " ".join(args)
    assert "-r [F,M,1] --metric mattes[F,M,1,32,regular,0.2] --transform Affine[0.25]" in text
    assert "--convergence 2100x1200x1200x0 --smoothing-sigmas 3x2x1x0 --shrink-factors 4x2x2x1" in text
    assert "--metric mattes[F,M,1,32] --transform SyN[0.2,3,0] --convergence [40x20x0,1e-07,8]" in text
    assert "--smoothing-sigmas 2x1x0 --shrink-factors 4x2x1" in text and "--random-seed 1" in text


def test_too_coarse_a_pyramid_is_refused() -> None:
    image = Image(np.zeros((12, 12), np.float32), np.eye(4))
    with pytest.raises(InputError, match="shrink_factors"):
        register(image, image, preset="SyNOnly", shrink_factors="8x4x1", smoothing_sigmas="2x1x0")


# ------------------------------------------------------------------ analytic cases


def test_known_2d_translation_is_recovered_within_half_a_voxel() -> None:
    shift = (3.0, -2.0)
    fixed, moving = shifted_pair((96, 96), shift)
    result = register(Image(fixed, AFFINE_2D), Image(moving, AFFINE_2D), **FAST)
    assert result.disp_vox.shape == (2, 96, 96) and result.disp_vox.dtype == np.float32
    inner = result.disp_vox[:, 24:-24, 24:-24].reshape(2, -1)
    np.testing.assert_allclose(np.median(inner, axis=1), shift, atol=0.5)
    assert result.extra["tool_versions"]["antspyx"] == "0.6.3"
    assert result.extra["ants_command"].startswith("antsRegistration --dimensionality 2")


def test_known_3d_translation_is_recovered_within_half_a_voxel() -> None:
    shift = (2.0, -1.5, 1.0)
    fixed, moving = shifted_pair((40, 44, 36), shift)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    result = register(Image(fixed, affine), Image(moving, affine), affine_iterations="100x50x0",
                      affine_shrink_factors="4x2x1", affine_smoothing_sigmas="2x1x0", iterations="20x10x0")
    inner = result.disp_vox[:, 10:-10, 10:-10, 10:-10].reshape(3, -1)
    np.testing.assert_allclose(np.median(inner, axis=1), shift, atol=0.5)


def test_known_affine_is_recovered_by_the_affine_stage() -> None:
    matrix = np.array([[1.05, 0.04], [-0.03, 0.97]])
    fixed, moving, truth = affine_pair((96, 96), matrix)
    result = register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), iterations="0x0x0")
    error = np.linalg.norm(result.disp_vox - truth, axis=0)[16:-16, 16:-16]
    assert np.median(error) < 0.3 and error.max() < 1.0


# ------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_field_warps_exactly_like_ants_apply_transforms(shared_data: Path) -> None:
    from registration_core.methods.syn import forward_transforms, registration_args, to_ants

    fixed, moving, *_ = brain_subject_pair(shared_data)
    result = register(fixed, moving, **FAST)
    # the same registration run by hand, its transforms applied by ANTs itself
    tmp = Path(pytest.importorskip("tempfile").mkdtemp())
    fixed_ants, moving_ants = to_ants(ants, fixed), to_ants(ants, moving)
    ants.image_write(fixed_ants, str(tmp / "f.nrrd"))
    ants.image_write(moving_ants, str(tmp / "m.nrrd"))
    params = get_method("syn").resolve_params(FAST)
    ants.registration(registration_args(params, 2, str(tmp / "f.nrrd"), str(tmp / "m.nrrd"), str(tmp / "r")), None)
    by_ants = ants.apply_transforms(fixed_ants, moving_ants, forward_transforms(str(tmp / "r"))).numpy()
    ours = warp_array(moving.data, result.disp_vox, "linear")
    mask = inside(result.disp_vox)
    assert mask.mean() > 0.9
    np.testing.assert_allclose(ours[mask], by_ants[mask], atol=1e-4 * float(moving.data.max()))


@pytest.mark.realdata
def test_one_thread_and_a_seed_repeat_exactly(shared_data: Path) -> None:
    fixed, moving, *_ = brain_subject_pair(shared_data)
    first = register(fixed, moving, iterations="0x0x0")  # the sampled affine stage: the random part
    second = register(fixed, moving, iterations="0x0x0")
    np.testing.assert_array_equal(first.disp_vox, second.disp_vox)
    other_seed = register(fixed, moving, iterations="0x0x0", seed=5)
    assert np.abs(other_seed.disp_vox - first.disp_vox).max() > 1e-4


@pytest.mark.realdata
def test_brain_slice_with_known_deformation_through_the_cli(shared_data: Path, tmp_path: Path) -> None:
    pair, labels = brain_truth_pair(shared_data)
    files = {"f": pair.fixed, "m": pair.moving, "fl": pair.fixed_labels, "ml": pair.moving_labels}
    for name, image in files.items():
        save_image(image, tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    run_cli("register", "--method", "syn", "--param", "preset=SyNOnly",
         "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
         "--fixed-labels", str(tmp_path / "fl.nii.gz"), "--moving-labels", str(tmp_path / "ml.nii.gz"),
         "--out", str(out), check=True)
    log = json.loads((out / "log.json").read_text())
    assert log["method"] == "syn" and log["params"]["preset"] == "SyNOnly" and log["tool"] == "antspyx"
    assert "antsRegistration" in log["ants_command"] and log["tool_versions"]["antspyx"] == "0.6.3"
    before = dice_summary(pair.fixed_labels.data, pair.moving_labels.data, labels)["mean"]
    after = dice_summary(pair.fixed_labels.data, load_image(out / "warped_labels.nii.gz", "labels").data, labels)["mean"]
    disp = load_displacement(out / "displacement.nii.gz", pair.fixed)
    error = np.linalg.norm(disp - pair.disp_vox, axis=0)[pair.fixed.data > 0.1]
    # measured: Dice 0.71 -> 0.95, mean error 0.4 px (true motion up to 8 px), no folding
    assert before < 0.8 and after > 0.9
    assert error.mean() < 0.8
    assert jacobian_stats(disp)["neg_jac_ratio"] < 1e-3


@pytest.mark.realdata
def test_small_lung_ct_with_known_deformation(shared_data: Path) -> None:
    pair = lung_truth_pair(shared_data)
    result = register(pair.fixed, pair.moving, preset="SyNOnly", metric="cc", cc_radius=2,
                      iterations="40x20x10", shrink_factors="4x2x1", smoothing_sigmas="2x1x0")
    mask = body_mask(pair.fixed)
    spacing = np.asarray(pair.fixed.spacing)[:, None]
    before = np.linalg.norm(pair.disp_vox[:, mask] * spacing, axis=0).mean()
    after = np.linalg.norm((result.disp_vox[:, mask] - pair.disp_vox[:, mask]) * spacing, axis=0).mean()
    # measured: 1.97 mm -> 1.45 mm mean error inside the body (5 mm slices, 57x78x64 voxels)
    assert after < 0.85 * before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_ants_call_ends_the_command(tmp_path: Path, signum: int) -> None:
    """ANTs does not return to Python for minutes: the signal, sent once ANTs has its inputs (an
    ordering), must end the process at once (killed by it, or 128 + signal when it lands just
    before the call) and leave no finished output. Without the default action during the call,
    the command would run the whole registration first (timeout)."""
    rng = np.random.default_rng(0)
    for name in ("f", "m"):
        save_image(Image(rng.random((48, 48, 48)).astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "registration_core", "register", "--method", "syn", "--fixed", tmp_path / "f.nii.gz",
         "--moving", tmp_path / "m.nii.gz", "--out", out, "--param", "linear_stages=none", "--param", "metric=cc",
         "--param", "cc_radius=2", "--param", "iterations=100000", "--param", "shrink_factors=1",
         "--param", "smoothing_sigmas=0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
        while process.poll() is None and not any(scratch.glob("syn-*/moving.nrrd")) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for an ordering, leaving the core to the command
        assert process.poll() is None and any(scratch.glob("syn-*/moving.nrrd")), process.communicate()[1]
        process.send_signal(signum)
        process.communicate(timeout=60)
    finally:
        process.kill()  # no-op once it has ended; a command still registering must not outlive the test
        process.wait()
    assert process.returncode in (-signum, 128 + signum)
    assert not (out / "log.json").exists()
