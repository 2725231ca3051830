"""Tests of registration_core.evaluation.surface: surfel HD95 (DeepMind surface-distance / Learn2Reg)
against a literal re-implementation from the published formulas, on cases where it differs from
the voxel-surface convention (registration_core.evaluation.metrics.hd95_summary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from registration_core.evaluation.metrics import hd95_summary
from registration_core.evaluation.surface import contour_length_table, hd95_surfel, surfel_area_table


def literal_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], areas: np.ndarray) -> float:
    """The reference recipe step by step: crop to the union's box with one zero slab after it,
    2x2(x2) correlation code (zero outside), borders, EDT, python-sorted (distance, area) tuples,
    cumulative area fraction, searchsorted."""
    ndim = a.ndim
    union = a | b
    lo = [int(np.nonzero(union.any(axis=tuple(x for x in range(ndim) if x != ax)))[0].min()) for ax in range(ndim)]
    hi = [int(np.nonzero(union.any(axis=tuple(x for x in range(ndim) if x != ax)))[0].max()) for ax in range(ndim)]
    box = tuple(slice(lo[i], hi[i] + 1) for i in range(ndim))
    kernel = (np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]]) if ndim == 3 else np.array([[8, 4], [2, 1]]))
    full = 255 if ndim == 3 else 15

    def codes(mask: np.ndarray) -> np.ndarray:
        crop = np.zeros(tuple(h - l + 2 for l, h in zip(lo, hi)), np.uint8)
        crop[tuple(slice(0, -1) for _ in range(ndim))] = mask[box]
        return ndimage.correlate(crop.astype(np.int64), kernel, mode="constant", cval=0)

    ca, cb = codes(a), codes(b)
    ba, bb = (ca != 0) & (ca != full), (cb != 0) & (cb != full)
    da, db = ndimage.distance_transform_edt(~ba, sampling=spacing), ndimage.distance_transform_edt(~bb, sampling=spacing)

    def percentile(dist: np.ndarray, area: np.ndarray) -> float:
        pairs = np.array(sorted(zip(dist, area)))
        cumulative = np.cumsum(pairs[:, 1]) / np.sum(pairs[:, 1])
        return float(pairs[min(int(np.searchsorted(cumulative, 0.95)), len(pairs) - 1), 0])

    return max(percentile(db[ba], areas[ca[ba]]), percentile(da[bb], areas[cb[bb]]))


def test_area_tables_hand_values() -> None:
    areas = surfel_area_table((1.0, 1.0, 1.0))
    assert areas[0] == 0 and areas[255] == 0
    assert areas[1] == pytest.approx(math.sqrt(3) / 8)  # one corner: triangle between three edge midpoints
    assert areas[0b11110000] == pytest.approx(1.0)  # one face of the cell inside: a unit square
    assert areas[0b00000011] == pytest.approx(math.sqrt(0.5))  # two corners along an edge: a 1 x sqrt(1/2) rectangle
    assert np.allclose(areas[1:255], areas[254:0:-1])  # a configuration and its complement share their surface
    anisotropic = surfel_area_table((2.0, 1.0, 3.0))
    assert anisotropic[0b11110000] == pytest.approx(3.0)  # face normal to axis 0: spacing 1 x 3
    lengths = contour_length_table((2.0, 1.0))
    assert lengths[0b0011] == pytest.approx(1.0) and lengths[0b0101] == pytest.approx(2.0)
    assert lengths[0b0001] == pytest.approx(0.5 * math.sqrt(5)) and lengths[0b0110] == pytest.approx(math.sqrt(5))


def test_identical_masks_give_zero_in_both_conventions() -> None:
    mask = np.zeros((12, 12, 12), bool)
    mask[3:9, 4:8, 2:10] = True
    assert hd95_surfel(mask, mask, (1.0, 1.0, 1.0)) == 0.0


def test_thin_layers_on_a_slab() -> None:
    """One-voxel-high layers on a slab: a small bump moves under 5 % of either surface (both 0 mm);
    a large layer moves the top face by one voxel (both 2 mm, the literal recipe agrees)."""
    fixed = np.zeros((24, 24, 12), np.int32)
    fixed[2:22, 2:22, 2:6] = 1
    warped = fixed.copy()
    warped[10:13, 10:13, 6] = 1
    spacing = (2.0, 2.0, 2.0)
    voxel = hd95_summary(fixed, warped, [1], spacing)["mean"]
    surfel = hd95_summary(fixed, warped, [1], spacing, convention="surfel")["mean"]
    assert surfel == pytest.approx(0.0)
    assert voxel == pytest.approx(0.0)  # fewer than 5 % of the surface voxels move either
    warped[4:20, 4:20, 6] = 1  # a large one-voxel layer: more than 5 % of the surface moves
    voxel = hd95_summary(fixed, warped, [1], spacing)["mean"]
    surfel = hd95_summary(fixed, warped, [1], spacing, convention="surfel")["mean"]
    assert voxel == pytest.approx(2.0)
    assert surfel == pytest.approx(2.0)
    assert surfel == pytest.approx(literal_hd95(fixed == 1, warped == 1, spacing, surfel_area_table(spacing)))


@pytest.mark.parametrize("shape, spacing", [((20, 22, 18), (1.0, 2.0, 1.5)), ((30, 28), (0.8, 1.2)), ((16, 16, 16), (2.0, 2.0, 2.0))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_literal_reimplementation(shape: tuple[int, ...], spacing: tuple[float, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.05
    b = ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.05
    areas = surfel_area_table(spacing) if len(shape) == 3 else contour_length_table(spacing)
    assert hd95_surfel(a, b, spacing) == pytest.approx(literal_hd95(a, b, spacing, areas), abs=1e-12)


def test_conventions_differ_on_a_shifted_sphere() -> None:
    """A sphere moved by half its radius: the voxel convention (centres of surface voxels) and the
    surfel convention (corner points weighted by area) give different HD95."""
    grid = np.mgrid[:32, :32, :32]
    fixed = ((grid - 15.5) ** 2).sum(axis=0) < 8**2
    warped = ((grid - np.array([15.5, 17.5, 16.5])[:, None, None, None]) ** 2).sum(axis=0) < 8**2
    voxel = hd95_summary(fixed.astype(int), warped.astype(int), [1], (2.0, 2.0, 2.0))["mean"]
    surfel = hd95_summary(fixed.astype(int), warped.astype(int), [1], (2.0, 2.0, 2.0), convention="surfel")["mean"]
    assert voxel != pytest.approx(surfel, abs=0.1)
    assert surfel == pytest.approx(literal_hd95(fixed, warped, (2.0, 2.0, 2.0), surfel_area_table((2.0, 2.0, 2.0))))
