"""Tests of registration_core.evaluation.metrics on small hand-made arrays with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from registration_core.errors import InputError
from registration_core.evaluation import metrics


def _boxes(shape: tuple[int, ...], starts: tuple[int, ...], size: int, label: int = 1) -> np.ndarray:
    """Integer label map of ``shape`` holding a cube of side ``size`` at ``starts``."""
    labels = np.zeros(shape, dtype=np.int16)
    labels[tuple(slice(s, s + size) for s in starts)] = label
    return labels


def _shift(starts: tuple[int, ...], axis: int, k: int) -> tuple[int, ...]:
    return tuple(s + k if d == axis else s for d, s in enumerate(starts))


# --------------------------------------------------------------------------- Dice


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("k, expected", [(0, 1.0), (1, 0.75), (2, 0.5), (4, 0.0)])
def test_dice_of_cubes_offset_by_k_voxels(ndim: int, k: int, expected: float) -> None:
    # Cubes of side 4 offset by k along the last axis overlap in (4 - k) * 4^(ndim-1) voxels.
    shape, starts = (12,) * ndim, (2,) * ndim
    fixed = _boxes(shape, starts, 4)
    warped = _boxes(shape, _shift(starts, ndim - 1, k), 4)
    assert metrics.dice_per_label(fixed, warped, [1]) == {1: pytest.approx(expected)}


def test_dice_skips_labels_absent_from_both_and_scores_one_sided_labels_zero() -> None:
    fixed = np.zeros((6, 6), dtype=np.int32)
    warped = np.zeros((6, 6), dtype=np.int32)
    fixed[0:2, 0:2] = 3  # 4 voxels
    warped[0:2, 0:1] = 3  # 2 voxels, both inside the fixed square: Dice 2*2/(4+2)
    fixed[4, 4] = 5  # label 5 only in fixed
    warped[5, 5] = 7  # label 7 only in warped
    summary = metrics.dice_summary(fixed, warped, [3, 5, 7, 9])
    assert summary["per_label"] == {3: pytest.approx(2 / 3), 5: 0.0, 7: 0.0}
    assert summary["skipped"] == [9]
    assert summary["mean"] == pytest.approx((2 / 3) / 3)
    assert metrics.dice_per_label(fixed, warped, [3, 5, 7, 9]) == summary["per_label"]


def test_dice_summary_raises_when_every_label_is_absent() -> None:
    labels = _boxes((5, 5), (1, 1), 2, label=2)
    with pytest.raises(InputError, match="none of the requested labels"):
        metrics.dice_summary(labels, labels, [4, 6])


@pytest.mark.parametrize(
    "fixed, warped, labels, message",
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), [1], "shape"),
        (np.zeros((4, 4)) + 0.5, np.zeros((4, 4), int), [1], "integers"),
        (np.zeros(4, int), np.zeros(4, int), [1], "2D or 3D"),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), [], "at least one label"),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), [1, 1], "duplicates"),
    ],
)
def test_dice_rejects_bad_input(fixed: np.ndarray, warped: np.ndarray, labels: list[int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        metrics.dice_per_label(fixed, warped, labels)


def test_dice_accepts_float_arrays_holding_integers() -> None:
    fixed = _boxes((6, 6), (1, 1), 2).astype(np.float32)
    assert metrics.dice_per_label(fixed, fixed, [1]) == {1: 1.0}


# --------------------------------------------------------------------------- HD95


@pytest.mark.parametrize("axis", [0, 1])
def test_hd95_of_squares_offset_with_anisotropic_spacing(axis: int) -> None:
    # 2x2 squares (all voxels on the surface) offset by 3 voxels: directed distances are
    # 2 and 3 voxels (two of each), the 95th percentile is 3 voxels = 3 * spacing[axis] mm.
    spacing = (2.0, 0.5)
    fixed = _boxes((10, 10), (1, 1), 2)
    warped = _boxes((10, 10), _shift((1, 1), axis, 3), 2)
    result = metrics.hd95_per_label(fixed, warped, [1], spacing)
    assert result == {1: pytest.approx(3 * spacing[axis])}


def test_hd95_of_cubes_offset_in_3d() -> None:
    # 2x2x2 cubes offset by 2 voxels along axis 2 of spacing 2.5 mm: distances 2.5 and 5 mm.
    fixed = _boxes((6, 6, 8), (1, 1, 1), 2)
    warped = _boxes((6, 6, 8), (1, 1, 3), 2)
    assert metrics.hd95_per_label(fixed, warped, [1], (1.0, 1.0, 2.5)) == {1: pytest.approx(5.0)}


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0), math.sqrt(2.0)), ((2.0, 1.0), math.sqrt(5.0))])
def test_hd95_euclidean_distance_between_nested_squares(spacing: tuple[float, float], expected: float) -> None:
    # A 5x5 square inside a 7x7 square with one centre. The 7x7 surface ring has 20 voxels at
    # one step from the 5x5 ring and 4 corners at the diagonal (1, 1) step: the 95th percentile
    # is that diagonal, sqrt(s0^2 + s1^2).
    fixed = _boxes((11, 11), (3, 3), 5)
    warped = _boxes((11, 11), (2, 2), 7)
    assert metrics.hd95_per_label(fixed, warped, [1], spacing) == {1: pytest.approx(expected)}


def test_hd95_measures_surface_to_surface_distances() -> None:
    # Fixed: a 21x21 square with a 3x3 hole in its centre; warped: the filled square. The fixed
    # surface is the outer ring (80 voxels, distance 0) plus the 12 voxels face-adjacent to the
    # hole, 8 voxels from the outer ring (12 / 92 > 5 %): HD95 = 8 * 1.5 mm. Distances between
    # whole masks would give 0 (the fixed mask lies inside the warped one, the hole is 1-2 voxels wide).
    warped = _boxes((23, 23), (1, 1), 21)
    fixed = warped.copy()
    fixed[10:13, 10:13] = 0
    assert metrics.hd95_per_label(fixed, warped, [1], (1.5, 1.5)) == {1: pytest.approx(12.0)}


def test_hd95_ignores_an_outlier_below_five_percent() -> None:
    # A 1-voxel-thick line of 100 voxels; the warped mask adds one voxel 10 rows away.
    # The plain Hausdorff distance would be 10 * 1.5 mm; 1 of 101 surface voxels is < 5 %.
    fixed = np.zeros((12, 100), dtype=np.int16)
    fixed[0, :] = 1
    warped = fixed.copy()
    warped[10, 0] = 1
    assert metrics.hd95_per_label(fixed, warped, [1], (1.5, 1.0)) == {1: 0.0}


def test_hd95_summary_reports_one_sided_labels_as_nan_with_reason() -> None:
    fixed = _boxes((10, 10), (1, 1), 2, label=1)
    warped = _boxes((10, 10), (1, 4), 2, label=1)  # offset 3 along axis 1: HD95 3 mm
    fixed[8, 8] = 2
    warped[0, 9] = 4
    summary = metrics.hd95_summary(fixed, warped, [1, 2, 4, 6], (1.0, 1.0))
    assert summary["per_label"][1] == pytest.approx(3.0)
    assert math.isnan(summary["per_label"][2]) and math.isnan(summary["per_label"][4])
    assert summary["undefined"] == {2: "present in fixed labels only", 4: "present in warped labels only"}
    assert summary["skipped"] == [6]
    assert summary["mean"] == pytest.approx(3.0)


def test_hd95_touching_the_array_border() -> None:
    # Masks on the border: their border voxels are surface voxels (outside counts as background).
    fixed = np.ones((4, 4), dtype=np.int16)
    warped = np.zeros((4, 4), dtype=np.int16)
    warped[:, :3] = 1
    # fixed surface: the 12 border voxels; warped surface: its 10 border voxels of a 4x3 block.
    # fixed->warped: column 3 (4 of 12 voxels) at 1 mm, others 0 -> P95 = 1; warped->fixed:
    # (1, 2) and (2, 2) lie inside the fixed mask, 1 mm from its surface -> P95 = 1.
    assert metrics.hd95_per_label(fixed, warped, [1], (1.0, 1.0)) == {1: pytest.approx(1.0)}


def test_hd95_rejects_bad_spacing() -> None:
    labels = _boxes((5, 5), (1, 1), 2)
    with pytest.raises(InputError, match="spacing_mm"):
        metrics.hd95_per_label(labels, labels, [1], (1.0, 0.0))
    with pytest.raises(InputError, match="spacing_mm"):
        metrics.hd95_per_label(labels, labels, [1], (1.0, 1.0, 1.0))


# --------------------------------------------------------------------------- Jacobian


def _index_grid(shape: tuple[int, ...]) -> np.ndarray:
    """(ndim, *shape) voxel coordinates."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def _affine_displacement(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """u(x) = (A - I) x on the voxel grid: (ndim, *shape)."""
    return np.einsum("rc,c...->r...", matrix - np.eye(len(shape)), _index_grid(shape))


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_identity_displacement_has_unit_jacobian(shape: tuple[int, ...]) -> None:
    stats = metrics.jacobian_stats(np.zeros((len(shape), *shape)))
    assert stats == {
        "neg_jac_ratio": 0.0,
        "neg_jac_sum": 0.0,
        "sdlogj": 0.0,
        "detj_min": 1.0,
        "detj_max": 1.0,
        "n_voxels": int(np.prod(shape)),
    }


@pytest.mark.parametrize(
    "matrix",
    [
        np.array([[1.2, 0.3], [-0.1, 0.9]]),
        np.array([[1.1, 0.2, -0.1], [0.05, 0.8, 0.1], [0.0, -0.2, 1.3]]),
    ],
)
def test_affine_displacement_has_jacobian_det_a(matrix: np.ndarray) -> None:
    shape = (6, 7, 8)[: len(matrix)]
    stats = metrics.jacobian_stats(_affine_displacement(matrix, shape))
    det = float(np.linalg.det(matrix))
    assert stats["detj_min"] == pytest.approx(det, abs=1e-5)
    assert stats["detj_max"] == pytest.approx(det, abs=1e-5)
    assert stats["neg_jac_ratio"] == 0.0
    assert stats["sdlogj"] == pytest.approx(0.0, abs=1e-5)


def test_reflection_folds_every_voxel() -> None:
    # det(A) = -0.5 everywhere: r^D = 1, s^D = 0.5 * 30, no positive determinant for SDlogJ.
    stats = metrics.jacobian_stats(_affine_displacement(np.array([[-0.5, 0.0], [0.0, 1.0]]), (5, 6)))
    assert stats["neg_jac_ratio"] == 1.0
    assert stats["neg_jac_sum"] == pytest.approx(15.0)
    assert math.isnan(stats["sdlogj"])


@pytest.mark.parametrize(
    "shape, step, expected_det",
    [((8, 5), -4.0, -1.0), ((8, 4, 3), -2.0, 0.0), ((8, 4, 3), -6.0, -2.0)],
)
def test_folding_step_gives_known_ratio_and_sum(shape: tuple[int, ...], step: float, expected_det: float) -> None:
    # u_0 jumps by ``step`` between rows 3 and 4: central differences give du_0/di = step / 2 on
    # rows 3 and 4 only, so detJ = 1 + step / 2 there and 1 elsewhere.
    disp = np.zeros((len(shape), *shape))
    disp[0, 4:] = step
    n_folded = 2 * int(np.prod(shape[1:]))
    stats = metrics.jacobian_stats(disp)
    assert stats["neg_jac_ratio"] == pytest.approx(n_folded / np.prod(shape))
    assert stats["neg_jac_sum"] == pytest.approx(n_folded * max(-expected_det, 0.0))
    assert stats["detj_min"] == pytest.approx(expected_det)
    assert stats["sdlogj"] == pytest.approx(0.0)


def test_sdlogj_of_two_jacobian_values_and_mask() -> None:
    # u_0 = i on columns 0-2 (detJ 2) and 0 on columns 3-5 (detJ 1): log detJ is ln 2 on half
    # the voxels and 0 on the other half, std (ddof 0) = ln(2) / 2.
    disp = np.zeros((2, 6, 6))
    disp[0, :, :3] = _index_grid((6, 6))[0, :, :3]
    stats = metrics.jacobian_stats(disp)
    assert stats["sdlogj"] == pytest.approx(math.log(2.0) / 2)
    assert (stats["detj_min"], stats["detj_max"]) == (pytest.approx(1.0), pytest.approx(2.0))
    mask = np.zeros((6, 6), dtype=bool)
    mask[:, :3] = True
    masked = metrics.jacobian_stats(disp, mask)
    assert masked["n_voxels"] == 18
    assert masked["sdlogj"] == pytest.approx(0.0)
    assert masked["detj_min"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "disp, mask, message",
    [
        (np.zeros((2, 4, 4)), np.zeros((4, 4), bool), "mask is empty"),
        (np.zeros((2, 4, 4)), np.ones((4, 5), bool), "mask shape"),
        (np.zeros((3, 4, 4)), None, "disp_vox must have shape"),
        (np.full((2, 4, 4), np.nan), None, "NaN"),
        (np.zeros((2, 1, 4)), None, "at least 2 voxels"),
    ],
)
def test_jacobian_stats_rejects_bad_input(disp: np.ndarray, mask: np.ndarray | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        metrics.jacobian_stats(disp, mask)


# --------------------------------------------------------------------------- TRE


def test_tre_with_linear_field_and_anisotropic_spacing() -> None:
    # u_0 = 1 + 0.5 j, u_1 = -2 on a 10x12 grid; linear interpolation is exact for this field.
    spacing = (2.0, 0.5)
    disp = np.zeros((2, 10, 12))
    disp[0] = 1.0 + 0.5 * _index_grid((10, 12))[1]
    disp[1] = -2.0
    fixed = np.array([[2.5, 3.3], [4.0, 4.0]])
    mapped = np.array([[2.5 + 1.0 + 1.65, 1.3], [4.0 + 3.0, 2.0]])
    moving = mapped + np.array([[0.0, 0.0], [1.0, 2.0]])  # second pair off by (1, 2) voxels
    errors = metrics.tre_mm(fixed, moving, disp, spacing)
    # (1 * 2 mm, 2 * 0.5 mm) -> sqrt(4 + 1)
    np.testing.assert_allclose(errors, [0.0, math.sqrt(5.0)], atol=1e-9)
    # before: (p - q) = (-2.65, 2.0) and (-4.0, 0.0) voxels
    np.testing.assert_allclose(
        metrics.tre_before(fixed, moving, spacing),
        [math.hypot(2.65 * 2.0, 2.0 * 0.5), 8.0],
    )


def test_tre_in_3d_with_zero_displacement_equals_tre_before() -> None:
    fixed = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    moving = np.array([[1.0, 2.0, 5.0], [3.0, 4.0, 0.0]])
    spacing = (1.0, 1.0, 3.0)
    expected = [6.0, 5.0]
    np.testing.assert_allclose(metrics.tre_mm(fixed, moving, np.zeros((3, 4, 5, 6)), spacing), expected)
    np.testing.assert_allclose(metrics.tre_before(fixed, moving, spacing), expected)


def test_tre_uses_the_border_displacement_within_half_a_voxel_of_the_grid() -> None:
    # u_0 = j on a 4x6 grid: at j = 5.4 (beyond the last centre j = 5) u_0 is the border value 5.
    disp = np.zeros((2, 4, 6))
    disp[0] = _index_grid((4, 6))[1]
    fixed = np.array([[-0.4, 5.4]])
    moving = np.array([[4.6, 5.4]])
    np.testing.assert_allclose(metrics.tre_mm(fixed, moving, disp, (1.0, 1.0)), [0.0], atol=1e-9)


@pytest.mark.parametrize(
    "fixed, moving, message",
    [
        (np.zeros((3, 2)), np.zeros((2, 2)), "landmark counts differ"),
        (np.zeros((2, 3)), np.zeros((2, 3)), r"shape \(N, 2\)"),
        (np.array([[0.0, 12.5]]), np.zeros((1, 2)), "outside the displacement grid"),
        (np.array([[np.nan, 1.0]]), np.zeros((1, 2)), "NaN"),
    ],
)
def test_tre_rejects_bad_points(fixed: np.ndarray, moving: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        metrics.tre_mm(fixed, moving, np.zeros((2, 10, 12)), (1.0, 1.0))


# --------------------------------------------------------------------------- known truth and similarity


def test_displacement_error_of_hand_computed_fields_in_mm() -> None:
    spacing = (2.0, 1.0)
    truth = np.zeros((2, 3, 3))
    truth[0] = 1.0  # one voxel along axis 0 = 2 mm everywhere
    zero = metrics.displacement_error_mm(np.zeros_like(truth), truth, spacing)
    assert (zero["mean"], zero["max"], zero["before"], zero["n_voxels"]) == (2.0, 2.0, 2.0, 9)
    estimate = truth.copy()
    estimate[1, 0, 0] = 3.0  # 3 voxels of 1 mm wrong along axis 1 at voxel (0, 0)
    mask = np.zeros((3, 3), bool)
    mask[0, :2] = True
    masked = metrics.displacement_error_mm(estimate, truth, spacing, mask)
    assert (masked["mean"], masked["max"], masked["n_voxels"]) == (1.5, 3.0, 2)
    assert metrics.displacement_error_mm(truth, truth, spacing)["max"] == 0.0


def test_displacement_error_in_3d_combines_axes_with_their_spacing() -> None:
    truth = np.zeros((3, 2, 2, 2))
    estimate = np.zeros((3, 2, 2, 2))
    estimate[0], estimate[2] = 1.0, 2.0  # (1 x 3 mm, 0, 2 x 2 mm) -> sqrt(9 + 16) = 5 mm
    error = metrics.displacement_error_mm(estimate, truth, (3.0, 1.0, 2.0))
    assert error["mean"] == pytest.approx(5.0) and error["before"] == 0.0


def test_displacement_error_rejects_bad_input() -> None:
    field = np.zeros((2, 4, 4))
    with pytest.raises(InputError, match="differs from truth_vox shape"):
        metrics.displacement_error_mm(field, np.zeros((2, 4, 5)), (1.0, 1.0))
    with pytest.raises(InputError, match="mask is empty"):
        metrics.displacement_error_mm(field, field, (1.0, 1.0), np.zeros((4, 4)))
    with pytest.raises(InputError, match="mask shape"):
        metrics.displacement_error_mm(field, field, (1.0, 1.0), np.ones((3, 4)))
    with pytest.raises(InputError, match="spacing_mm"):
        metrics.displacement_error_mm(field, field, (1.0, 0.0))


def test_image_similarity_of_affine_related_images() -> None:
    a = np.arange(12, dtype=float).reshape(3, 4)
    assert metrics.image_similarity(a, 2 * a + 1)["ncc"] == pytest.approx(1.0)
    assert metrics.image_similarity(a, -a)["ncc"] == pytest.approx(-1.0)
    assert metrics.image_similarity(a, a + 1)["mse"] == pytest.approx(1.0)
    assert math.isnan(metrics.image_similarity(a, np.ones_like(a))["ncc"])
    mask = np.zeros((3, 4), bool)
    mask[0] = True  # row 0: 0, 1, 2, 3 vs 0, 1, 2, 5
    other = a.copy()
    other[0, 3] = 5.0
    assert metrics.image_similarity(a, other, mask)["mse"] == pytest.approx(4.0 / 4)
    with pytest.raises(InputError, match="differ in shape"):
        metrics.image_similarity(a, a[:2])
    with pytest.raises(InputError, match="NaN"):
        metrics.image_similarity(a, np.full_like(a, np.nan))
