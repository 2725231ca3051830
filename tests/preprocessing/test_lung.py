"""Tests of registration_core.preprocessing.lung: lung masking of CT on phantoms and on real thorax CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from registration_core.core.io import Image, load_image, voxel_to_ras
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary
from registration_core.preprocessing.lung import (
    LEFT_LUNG,
    RIGHT_LUNG,
    _close_and_fill,
    _convex_hull,
    _morphology,
    lung_mask,
    mask_image,
)
from registration_core.preprocessing.steps import resample, resample_to, run_steps

from support.cli import run_cli

SHAPE = (64, 48, 48)
# 2 mm voxels, array axis 0 towards the patient's left (RAS x decreases), axis 2 towards S
AFFINE = np.array([[-2.0, 0, 0, 60.0], [0, 2.0, 0, -40.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1.0]])
AIR, LUNG, TISSUE = -1000.0, -850.0, 40.0


def ellipsoid(centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Boolean ellipsoid (voxels) on the phantom grid."""
    index = np.indices(SHAPE, dtype=np.float64)
    return sum(((index[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


def tube(centre: tuple[float, float], radius: float, axis: int, lo: int, hi: int) -> np.ndarray:
    """Boolean cylinder along array ``axis`` from voxel ``lo`` to ``hi`` (inclusive); centre in the other two axes."""
    index = np.indices(SHAPE, dtype=np.float64)
    others = [a for a in range(3) if a != axis]
    inside = sum((index[a] - c) ** 2 for a, c in zip(others, centre)) <= radius**2
    return inside & (index[axis] >= lo) & (index[axis] <= hi)


def phantom(lung_centres: tuple[float, float], airways: bool) -> tuple[Image, np.ndarray, np.ndarray]:
    """CT phantom in HU: body, two lungs (one with a vessel), optionally a trachea and main bronchi.

    Returns the image, the true lung labels (1 = lung at lung_centres[0], 2 = the other) and the airways.
    """
    body = ellipsoid((31.5, 23.5, 24.0), (30.0, 21.0, 40.0))
    lungs = [ellipsoid((x, 23.5, 20.0), (10.0, 14.0, 16.0)) for x in lung_centres]
    airway = np.zeros(SHAPE, bool)
    if airways:
        airway = tube((31.5, 23.5), 4.0, 2, 28, 47) | tube((23.5, 28.0), 2.5, 0, 20, 44)
    data = np.full(SHAPE, AIR)
    data[body] = TISSUE
    data[lungs[0] | lungs[1]] = LUNG
    data[airway] = AIR
    vessel = ellipsoid((lung_centres[1], 23.5, 20.0), (2.0, 2.0, 2.0))
    data[vessel] = TISSUE  # a vessel inside a lung is part of the lung mask
    truth = np.where(lungs[0], 1, np.where(lungs[1], 2, 0))
    return Image(data.astype(np.float32), AFFINE), truth, airway & ~lungs[0] & ~lungs[1]


def ras_x(mask: np.ndarray) -> float:
    """Mean RAS x (mm) of a mask's voxels on the phantom grid."""
    return float(voxel_to_ras(np.argwhere(mask), AFFINE)[:, 0].mean())


def test_separate_lungs_without_airways_and_with_vessels() -> None:
    image, truth, airway = phantom((14.0, 49.0), airways=True)
    mask = lung_mask(image)
    assert mask.data.dtype == np.uint8 and mask.same_grid(image)
    assert set(np.unique(mask.data)) == {0, RIGHT_LUNG, LEFT_LUNG}
    # array axis 0 points to the left: the lung at small i has the larger RAS x, the right lung
    assert ras_x(mask.data == RIGHT_LUNG) > ras_x(mask.data == LEFT_LUNG)
    scores = dice_summary(truth, mask.data, [1, 2])["per_label"]
    assert min(scores.values()) >= 0.95, scores
    far_airway = airway & (np.indices(SHAPE)[2] >= 32)  # the trachea above the lungs
    assert not np.any(mask.data[far_airway])
    assert np.all(mask.data[ellipsoid((49.0, 23.5, 20.0), (2.0, 2.0, 2.0))] == LEFT_LUNG)  # the vessel


def test_touching_lungs_are_split_at_the_mid_sagittal_plane() -> None:
    image, truth, _ = phantom((22.0, 41.0), airways=False)  # the ellipsoids overlap: one component
    mask = lung_mask(image)
    union = dice_summary((truth > 0).astype(int), (mask.data > 0).astype(int), [1])["mean"]
    assert union >= 0.95
    right_i = np.argwhere(mask.data == RIGHT_LUNG)[:, 0]
    left_i = np.argwhere(mask.data == LEFT_LUNG)[:, 0]
    assert right_i.max() <= left_i.min() + 1  # a plane separates them (to a voxel, after the closing)
    assert abs((right_i.max() + left_i.min()) / 2 - 31.5) <= 2  # near the middle of the body
    assert 0.8 < right_i.size / left_i.size < 1.25


def test_mask_image_and_the_step() -> None:
    image, _, _ = phantom((14.0, 49.0), airways=False)
    mask = lung_mask(image)
    masked = mask_image(image, mask, background=-1000.0)
    np.testing.assert_array_equal(masked.data, np.where(mask.data > 0, image.data, -1000.0))
    labels = image.with_data(np.ones(SHAPE, np.int32))
    out, out_labels = run_steps(image, labels, [{"step": "lung_mask", "output": "masked"}])
    np.testing.assert_array_equal(out.data, np.where(mask.data > 0, image.data, 0.0))
    assert out_labels is labels
    as_mask, _ = run_steps(image, None, [{"step": "lung_mask", "airway_radius_mm": 6.0}])
    np.testing.assert_array_equal(as_mask.data, mask.data)


def test_errors() -> None:
    image, _, _ = phantom((14.0, 49.0), airways=False)
    with pytest.raises(InputError, match="needs a 3D CT"):
        lung_mask(Image(image.data[:, :, 20], AFFINE))
    with pytest.raises(InputError, match="no low-HU region"):
        lung_mask(image.with_data(np.where(image.data > -900, TISSUE, AIR).astype(np.float32)))
    with pytest.raises(InputError, match="no voxel above body_hu"):
        lung_mask(image.with_data(np.full(SHAPE, AIR, np.float32)))
    with pytest.raises(InputError, match="must be positive"):
        lung_mask(image, airway_radius_mm=0)
    with pytest.raises(InputError, match="not on the grid"):
        mask_image(image, Image(np.ones((2, 2, 2), np.uint8), AFFINE))


def test_convex_hull_fill_matches_the_half_plane_test() -> None:
    """Row intervals of the hull = every pixel within 0.5 of all hull facets (checked pixel by pixel)."""
    rng = np.random.default_rng(0)
    for n_points in (3, 7, 40):
        plane = np.zeros((37, 29), bool)
        plane[tuple(rng.integers(0, (37, 29), size=(n_points, 2)).T)] = True
        points = np.argwhere(plane)
        equations = ConvexHull(points).equations
        pixels = np.indices(plane.shape).reshape(2, -1).T
        expected = np.all(pixels @ equations[:, :2].T + equations[:, 2] <= 0.5, axis=1).reshape(plane.shape)
        np.testing.assert_array_equal(_convex_hull(plane), expected)
    line = np.zeros((5, 5), bool)
    line[1:4, 2] = True  # collinear pixels: no area, returned as they are
    np.testing.assert_array_equal(_convex_hull(line), line)


def test_closing_in_a_bounding_box_equals_the_whole_volume() -> None:
    """A lung touching the array border and one in the middle: boxed closing + fill = whole-volume result."""
    image, truth, _ = phantom((14.0, 50.0), airways=False)
    notched = truth > 0
    notched[:, 20:23, 18:21] = False  # a notch the closing fills
    at_border = notched & (np.indices(SHAPE)[0] < 20)
    at_border[:3] |= notched[10:13]  # reaches array index 0
    for lung in (at_border, notched & (np.indices(SHAPE)[0] >= 32)):
        whole = _morphology(image, lung, 4.0, "close")
        whole = np.moveaxis(np.stack([ndimage.binary_fill_holes(plane) for plane in np.moveaxis(whole, 2, 0)]), 0, 2)
        boxed = _close_and_fill(image, lung, 4.0)
        np.testing.assert_array_equal(boxed, whole)
        assert (boxed & ~lung).sum() > 10  # the notch was filled
    assert not _close_and_fill(image, np.zeros(SHAPE, bool), 4.0).any()


# ----------------------------------------------------------------------------- real CT


@pytest.mark.realdata
def test_lung_mask_matches_the_reference_mask(shared_data: Path) -> None:
    """Dice of our mask against the published mask (resampled onto the CT) is >= 0.9 (measured 0.986)."""
    folder = shared_data / "lung-ct-small"
    ct = load_image(folder / "3DCT_lung_baseline_small.mha")
    reference = resample_to(load_image(folder / "3DCT_lung_baseline_mask.mha", "labels"), ct)
    mask = lung_mask(ct)
    dice = dice_summary((reference.data > 0).astype(int), (mask.data > 0).astype(int), [1])["mean"]
    assert dice >= 0.9


@pytest.mark.realdata
@pytest.mark.slow
def test_thorax_ct_has_two_lungs_of_plausible_volume(shared_data: Path) -> None:
    """Resampled to 3 mm: two lungs, right larger than left, 3-7 litres in total (measured 2.91 + 2.34 l)."""
    ct = resample(load_image(shared_data / "thorax-ct" / "ct.nii.gz"), spacing=3.0)
    mask = lung_mask(ct)
    litres = {label: float((mask.data == label).sum()) * np.prod(ct.spacing) / 1e6 for label in (1, 2)}
    assert 3.0 <= litres[RIGHT_LUNG] + litres[LEFT_LUNG] <= 7.0, litres
    assert 1.0 < litres[RIGHT_LUNG] / litres[LEFT_LUNG] < 1.5, litres
    centres = {label: voxel_to_ras(np.argwhere(mask.data == label), ct.affine)[:, 0].mean() for label in (1, 2)}
    assert centres[RIGHT_LUNG] > centres[LEFT_LUNG] + 50  # about 10 cm apart along R-L


@pytest.mark.realdata
def test_cli_lung_mask(shared_data: Path, tmp_path: Path) -> None:
    ct_path = shared_data / "lung-ct-small" / "3DCT_lung_baseline_small.mha"
    out = tmp_path / "mask.nii.gz"
    result = run_cli("preprocess", "lung-mask", "--image", ct_path, "--out", out, timeout=120)
    assert result.returncode == 0, result.stderr
    written = load_image(out, "labels")
    np.testing.assert_array_equal(written.data, lung_mask(load_image(ct_path)).data)
    assert written.same_grid(load_image(ct_path), atol=1e-3)
