"""Tests of registration_core.data.truth: known-truth pairs, field inversion, files and the synth-pair command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from registration_core import cli
from registration_core.core import io, spatial
from registration_core.data.truth import (
    deform_with_truth,
    invert_displacement,
    make_truth_pair,
    retina_truth_pair,
    write_truth_pair,
)
from registration_core.errors import InputError
from registration_core.evaluation import metrics
from registration_core.methods import get_method

AFFINE = np.diag([2.0, 1.5, 2.5, 1.0])


def _smooth_image(shape: tuple[int, ...], seed: int = 0) -> io.Image:
    """Smooth random texture in [0, 1] on a grid of spacing AFFINE (3D) or (2, 1.5) mm (2D)."""
    data = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    data = (data - data.min()) / (data.max() - data.min())
    return io.Image(data.astype(np.float32), AFFINE)


def _box_mask(shape: tuple[int, ...], margin: int = 4) -> io.Image:
    """Two labels filling the left and right half of the interior (``margin`` voxels from the border)."""
    data = np.zeros(shape, np.uint8)
    inner = tuple(slice(margin, n - margin) for n in shape)
    data[inner] = 1
    data[(slice(shape[0] // 2, shape[0] - margin), *inner[1:])] = 2
    return io.Image(data, AFFINE)


@pytest.mark.parametrize("shape", [(24, 20, 16), (30, 26)])
def test_constant_translation_shifts_the_moving_image_exactly(shape: tuple[int, ...]) -> None:
    fixed = _smooth_image(shape)
    labels = _box_mask(shape)
    shift = np.zeros((len(shape), *shape), np.float32)
    shift[0] = 2.0  # fixed voxel p corresponds to moving voxel p + (2, 0[, 0])
    pair = deform_with_truth(fixed, shift, np.random.default_rng(0), labels=labels, n_landmarks=10)
    # moving(y) = fixed(y - 2) along axis 0: an exact integer shift inside the grid
    np.testing.assert_allclose(pair.moving.data[2:], fixed.data[:-2], atol=1e-5)
    np.testing.assert_array_equal(pair.moving_labels.data[2:], labels.data[:-2])
    assert pair.moving_labels.data.dtype == labels.data.dtype
    # warping the moving image by the true displacement gives back the fixed image
    warped = spatial.warp_array(pair.moving.data, pair.disp_vox)
    np.testing.assert_allclose(warped[:-2], fixed.data[:-2], atol=1e-5)
    # landmarks correspond exactly: moving = fixed + (2, 0[, 0])
    np.testing.assert_array_equal(pair.moving_landmarks - pair.fixed_landmarks, np.eye(len(shape))[[0] * 10] * 2.0)
    assert pair.info["inversion_residual_vox"] == 0.0


def test_inversion_of_a_smooth_field_has_a_small_residual() -> None:
    rng = np.random.default_rng(1)
    field = ndimage.gaussian_filter(rng.normal(size=(3, 30, 28, 26)), (0, 5, 5, 5))
    disp = field * (3.0 / np.abs(field).max())  # up to 3 voxels, gradients well below 1
    inverse, residual, iterations = invert_displacement(disp)
    assert residual < 1e-3 and iterations < 30
    # independent check: (id + d) o (id + e) = id, i.e. e + d o (id + e) = 0
    composed = spatial.compose(torch.from_numpy(disp)[None], torch.from_numpy(inverse)[None])[0].numpy()
    assert np.abs(composed).max() < 1e-3


@pytest.fixture(scope="module")
def single_pair():
    fixed = _smooth_image((32, 30, 28))
    return make_truth_pair(
        fixed, _box_mask(fixed.shape), "single", max_disp_mm=5.0, noise_std=0.0, seed=3, n_landmarks=12,
        labels=_box_mask(fixed.shape), grid_spacing_mm=25.0,
    )


def test_single_frequency_pair_is_known_exactly(single_pair) -> None:
    pair = single_pair
    magnitude = metrics.displacement_error_mm(np.zeros_like(pair.disp_vox), pair.disp_vox, (2.0, 1.5, 2.5))
    inside = pair.mask.data > 0
    mags = np.sqrt(np.sum((pair.disp_vox * np.array([2.0, 1.5, 2.5]).reshape(3, 1, 1, 1)) ** 2, axis=0))
    assert mags[inside].max() == pytest.approx(5.0, rel=1e-5)  # the maximum is taken inside the mask
    assert magnitude["before"] > 0.5
    assert pair.info["detj_min"] > 0 and pair.info["inversion_residual_vox"] < 1e-3
    # warping the moving image by the truth recovers the fixed image far better than no warp
    warped = spatial.warp_array(pair.moving.data, pair.disp_vox)
    after = np.abs(warped - pair.fixed.data)[inside].mean()
    before = np.abs(pair.moving.data - pair.fixed.data)[inside].mean()
    assert after < 0.2 * before  # what is left: two interpolations (cubic, then linear)
    # landmarks: moving = fixed + d(fixed) at voxel centres, read straight from the grid
    index = tuple(pair.fixed_landmarks.astype(int).T)
    at_landmarks = pair.disp_vox[(slice(None), *index)].T
    np.testing.assert_allclose(pair.moving_landmarks - pair.fixed_landmarks, at_landmarks, atol=1e-5)
    assert len(pair.fixed_landmarks) == 12 and np.all(inside[index])


def test_mixed_frequency_pair_reaches_max_disp_mm_inside_the_mask() -> None:
    fixed = _smooth_image((48, 44))
    mask = _box_mask(fixed.shape, margin=3)
    pair = make_truth_pair(fixed, mask, "mixed", max_disp_mm=4.0, noise_std=0.0, seed=2, n_landmarks=5)
    spacing = np.array([2.0, 1.5]).reshape(2, 1, 1)
    magnitude = np.sqrt(np.sum((pair.disp_vox * spacing) ** 2, axis=0))
    assert magnitude[mask.data > 0].max() == pytest.approx(4.0, rel=1e-5)
    assert pair.info["motion"] == "mixed" and pair.info["detj_min"] > 0


def test_same_seed_gives_the_same_pair() -> None:
    fixed = _smooth_image((20, 20))
    a = make_truth_pair(fixed, None, "single", 3.0, 0.02, seed=5, n_landmarks=4)
    b = make_truth_pair(fixed, None, "single", 3.0, 0.02, seed=5, n_landmarks=4)
    c = make_truth_pair(fixed, None, "single", 3.0, 0.02, seed=6, n_landmarks=4)
    np.testing.assert_array_equal(a.moving.data, b.moving.data)
    np.testing.assert_array_equal(a.disp_vox, b.disp_vox)
    assert not np.array_equal(a.disp_vox, c.disp_vox)


def test_respiratory_pair_moves_the_lungs_by_at_most_max_disp_mm() -> None:
    fixed = _smooth_image((28, 26, 30))
    mask = _box_mask(fixed.shape, margin=6)
    pair = make_truth_pair(fixed, mask, "respiratory", max_disp_mm=6.0, noise_std=0.01, seed=0, n_landmarks=6)
    assert pair.info["max_disp_mm"] == pytest.approx(6.0, rel=1e-5)
    assert pair.info["detj_min"] > 0
    assert pair.moving_mask is not None and set(np.unique(pair.moving_mask.data)) <= {0, 1, 2}
    assert {int(mask.data[tuple(p)]) for p in pair.fixed_landmarks.astype(int)} == {1, 2}


def test_bad_arguments_are_named() -> None:
    fixed = _smooth_image((20, 20))
    with pytest.raises(InputError, match="motion 'twist'"):
        make_truth_pair(fixed, None, "twist")
    with pytest.raises(InputError, match="needs a 3D image"):
        make_truth_pair(fixed, None, "respiratory")
    with pytest.raises(InputError, match="noise_std"):
        make_truth_pair(fixed, None, "single", noise_std=-1.0)
    with pytest.raises(InputError, match="max_disp_mm"):
        make_truth_pair(fixed, None, "single", max_disp_mm=0.0)
    with pytest.raises(InputError, match="not on the grid"):
        make_truth_pair(fixed, io.Image(np.ones((21, 20), np.uint8), AFFINE), "single")
    with pytest.raises(InputError, match="empty"):
        make_truth_pair(fixed, io.Image(np.zeros((20, 20), np.uint8), AFFINE), "single")
    with pytest.raises(InputError, match="folds"):
        deform_with_truth(fixed, np.stack([np.tile(np.arange(20.0) * -2, (20, 1)).T, np.zeros((20, 20))]),
                          np.random.default_rng(0))


def test_written_files_read_back_as_the_pair(single_pair, tmp_path: Path) -> None:
    written = write_truth_pair(single_pair, tmp_path / "pair")
    names = {path.name for path in written}
    assert names == {
        "fixed.nii.gz", "moving.nii.gz", "fixed_labels.nii.gz", "moving_labels.nii.gz", "mask.nii.gz",
        "moving_mask.nii.gz", "truth_displacement.nii.gz", "fixed_landmarks.csv", "moving_landmarks.csv", "truth.json",
    }
    fixed = io.load_image(tmp_path / "pair" / "fixed.nii.gz")
    disp = io.load_displacement(tmp_path / "pair" / "truth_displacement.nii.gz", fixed)
    np.testing.assert_allclose(disp, single_pair.disp_vox, atol=1e-5)
    points = io.load_landmarks(tmp_path / "pair" / "moving_landmarks.csv", fixed)
    np.testing.assert_allclose(points, single_pair.moving_landmarks, atol=1e-9)
    assert json.loads((tmp_path / "pair" / "truth.json").read_text())["motion"] == "single"


def test_synth_pair_then_evaluate_the_truth_gives_zero_error(tmp_path: Path) -> None:
    image = _smooth_image((26, 24, 22))
    io.save_image(image, tmp_path / "ct.nii.gz")
    io.save_image(_box_mask(image.shape, margin=5), tmp_path / "lungs.nii.gz")
    out = tmp_path / "pair"
    status = cli.main([
        "synth-pair", "--image", str(tmp_path / "ct.nii.gz"), "--mask", str(tmp_path / "lungs.nii.gz"),
        "--motion", "respiratory", "--max-disp-mm", "5", "--noise-std", "0.01", "--seed", "0",
        "--n-landmarks", "8", "--min-distance-mm", "4", "--out-dir", str(out),
    ])
    assert status == 0
    # the true field scored as if a registration had returned it: no error at all
    status = cli.main([
        "evaluate", "--displacement", str(out / "truth_displacement.nii.gz"),
        "--truth-displacement", str(out / "truth_displacement.nii.gz"), "--mask", str(out / "mask.nii.gz"),
        "--fixed-landmarks", str(out / "fixed_landmarks.csv"), "--moving-landmarks", str(out / "moving_landmarks.csv"),
        "--fixed-image", str(out / "fixed.nii.gz"), "--moving-image", str(out / "moving.nii.gz"),
        "--out", str(tmp_path / "metrics.json"),
    ])
    assert status == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["tre_truth_mm"] == 0.0 and result["tre_truth_max_mm"] == 0.0
    assert result["tre_mean_mm"] < 1e-4 and result["tre_before_mm"] > 0.5
    assert result["n_landmarks"] == 8 and "dice_mean" not in result
    assert len(pd.read_csv(out / "fixed_landmarks.csv")) == 8


def test_synth_pair_bad_motion_fails_cleanly(tmp_path: Path, capsys) -> None:
    io.save_image(_smooth_image((20, 20)), tmp_path / "slice.nii.gz")
    status = cli.main(["synth-pair", "--image", str(tmp_path / "slice.nii.gz"), "--out-dir", str(tmp_path / "out")])
    assert status == 2
    assert "needs a 3D image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_nodeo_reduces_the_true_error_on_the_fundus_pair() -> None:
    pair = retina_truth_pair(size=96, max_disp_mm=3.0, n_landmarks=30)
    assert pair.fixed.shape == (96, 96) and pair.info["n_landmarks"] == 30
    nodeo = get_method("nodeo")
    result = nodeo.register(pair.fixed, pair.moving, nodeo.resolve_params({"iterations": 40, "ncc_window": 9}))
    error = metrics.displacement_error_mm(result.disp_vox, pair.disp_vox, pair.fixed.spacing, pair.mask.data)
    assert error["mean"] < 0.6 * error["before"]
    tre = metrics.tre_mm(pair.fixed_landmarks, pair.moving_landmarks, result.disp_vox, pair.fixed.spacing)
    before = metrics.tre_before(pair.fixed_landmarks, pair.moving_landmarks, pair.fixed.spacing)
    assert tre.mean() < 0.6 * before.mean()
