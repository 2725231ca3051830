"""Tests of registration_core.data.landmarks: Foerstner response, blob recovery, spread, real thorax CT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from registration_core.core import io
from registration_core.data.landmarks import detect_landmarks, foerstner_response
from registration_core.errors import InputError
from registration_core.preprocessing import lung
from registration_core.preprocessing import steps as preprocess

BLOBS_3D = [(8, 9, 10), (8, 26, 22), (22, 12, 27), (27, 28, 9), (18, 20, 18)]
BLOBS_2D = [(8, 9), (8, 26), (22, 12), (27, 28), (18, 20)]


def _blob_image(shape: tuple[int, ...], centres: list[tuple[int, ...]], spacing: tuple[float, ...]) -> io.Image:
    """Gaussian blobs (sigma 1.5 voxels) of height 1 at ``centres`` on a zero background."""
    data = np.zeros(shape)
    for centre in centres:
        data[centre] = 1.0
    data = ndimage.gaussian_filter(data, 1.5)
    affine = np.diag([*spacing, *([1.0] * (3 - len(spacing))), 1.0])
    return io.Image((data / data.max()).astype(np.float32), affine)


@pytest.mark.parametrize(("shape", "centres", "spacing"), [
    ((36, 36, 36), BLOBS_3D, (1.0, 1.0, 1.0)),
    ((36, 36), BLOBS_2D, (1.0, 1.0)),
    ((36, 36, 36), BLOBS_3D, (1.0, 1.2, 0.8)),
])
def test_detector_finds_every_blob_centre(shape, centres, spacing) -> None:
    image = _blob_image(shape, centres, spacing)
    points = detect_landmarks(image, None, n=len(centres), min_distance_mm=6.0, border_mm=2.0)
    assert points.shape == (len(centres), len(shape))
    found = sorted(map(tuple, points.astype(int).tolist()))
    assert found == sorted(centres)
    assert np.all(points == np.round(points))  # voxel centres: the truth there is exact


def test_foerstner_response_is_zero_on_flat_images_and_small_on_straight_edges() -> None:
    flat = foerstner_response(np.ones((20, 20)), (1.0, 1.0))
    assert np.all(flat == 0)
    edge = np.zeros((40, 40))
    edge[:, 20:] = 1.0  # a straight edge: one gradient direction only
    corner = np.zeros((40, 40))
    corner[20:, 20:] = 1.0
    edge_peak = foerstner_response(edge, (1.0, 1.0)).max()
    corner_peak = foerstner_response(corner, (1.0, 1.0)).max()
    assert edge_peak < 1e-6 * corner_peak


def _textured(shape: tuple[int, ...], seed: int = 0) -> io.Image:
    rng = np.random.default_rng(seed)
    return io.Image(ndimage.gaussian_filter(rng.random(shape), 1.0).astype(np.float32), np.eye(4))


def test_budget_is_split_by_region_volume_and_points_keep_their_distance() -> None:
    image = _textured((60, 40))
    mask = np.zeros((60, 40), np.uint8)
    mask[2:44, 2:38] = 1  # 3 x the area of region 2
    mask[46:58, 2:38] = 2
    points = detect_landmarks(image, io.Image(mask, np.eye(4)), n=8, min_distance_mm=4.0, border_mm=1.0)
    regions = mask[tuple(points.astype(int).T)]
    assert np.sum(regions == 1) == 6 and np.sum(regions == 2) == 2
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2)]
    assert min(distances) >= 4.0


def test_points_stay_deeper_than_border_mm_inside_the_mask() -> None:
    image = _textured((40, 40))
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 1
    points = detect_landmarks(image, io.Image(mask, np.eye(4)), n=30, min_distance_mm=3.0, border_mm=4.0)
    assert len(points) == 30
    assert points.min() > 5 + 3 and points.max() < 34 - 3  # depth > 4 voxels from the mask edge


def test_a_region_full_before_its_quota_passes_points_to_the_others() -> None:
    image = _textured((40, 40))
    mask = np.zeros((40, 40), np.uint8)
    mask[2:38, 4] = 1  # a line of 36 voxels (quota 6): room for 8 or 9 points 4 mm apart
    mask[20:26, 20:26] = 2  # 36 voxels too (quota 6) but room for only 4 points
    points = detect_landmarks(image, io.Image(mask, np.eye(4)), n=12, min_distance_mm=4.0, border_mm=0.5)
    regions = mask[tuple(points.astype(int).T)]
    assert (len(points), np.sum(regions == 1), np.sum(regions == 2)) == (12, 8, 4)
    fewer = detect_landmarks(image, io.Image(mask, np.eye(4)), n=30, min_distance_mm=4.0, border_mm=0.5)
    assert len(fewer) == 12  # no more room: fewer than n, never closer than min_distance_mm


def test_bad_inputs_name_the_parameter() -> None:
    image = _textured((20, 20))
    with pytest.raises(InputError, match="n=0"):
        detect_landmarks(image, None, 0, 3.0)
    with pytest.raises(InputError, match="min_distance_mm"):
        detect_landmarks(image, None, 5, 0.0)
    with pytest.raises(InputError, match="not on the grid"):
        detect_landmarks(image, io.Image(np.ones((21, 20), np.uint8), np.eye(4)), 5, 3.0)
    with pytest.raises(InputError, match="border_mm"):
        detect_landmarks(image, io.Image(np.ones((20, 20), np.uint8), np.eye(4)), 5, 3.0, border_mm=15.0)
    with pytest.raises(InputError, match="integer labels"):
        detect_landmarks(image, io.Image(np.full((20, 20), 0.5, np.float32), np.eye(4)), 5, 3.0)


@pytest.mark.realdata
def test_thorax_ct_gets_over_100_landmarks_in_both_lungs(shared_data) -> None:
    ct = preprocess.resample(io.load_image(shared_data / "thorax-ct" / "ct.nii.gz"), spacing=4.0)
    mask = lung.lung_mask(ct)
    image = preprocess.normalize(preprocess.clip_intensity(ct, -1000.0, 0.0))
    points = detect_landmarks(image, mask, n=120, min_distance_mm=12.0)
    assert len(points) == 120
    regions = mask.data[tuple(points.astype(int).T)]
    volumes = [np.sum(mask.data == label) for label in (1, 2)]
    assert set(regions.tolist()) == {1, 2}
    # each lung gets its share of the budget (largest remainder)
    assert abs(np.sum(regions == 1) - 120 * volumes[0] / sum(volumes)) <= 1
