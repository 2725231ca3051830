"""Tests of registration_core.data.synth: random smooth deformations and intensity transforms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from registration_core.core.io import Image
from registration_core.data import synth
from registration_core.errors import InputError

# (shape, spacing_mm, grid_spacing_mm, max_disp_mm, smooth_sigma_mm): one 2D and one anisotropic 3D grid
CASES = [
    ((40, 48), (1.0, 1.0), 10.0, 8.0, 2.0),
    ((24, 30, 20), (2.0, 1.5, 2.5), 16.0, 6.0, 3.0),
]
IDS = ["2d", "3d"]


def detj_numpy(disp_vox: np.ndarray) -> np.ndarray:
    """det of I + grad u with np.gradient central differences; (ndim, *spatial) -> (*spatial)."""
    ndim = disp_vox.shape[0]
    jac = np.empty(disp_vox.shape[1:] + (ndim, ndim))
    for r in range(ndim):
        for c in range(ndim):
            jac[..., r, c] = (r == c) + np.gradient(disp_vox[r].astype(np.float64), axis=c)
    return np.linalg.det(jac)


def magnitude_mm(disp_vox: np.ndarray, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """|u| in mm computed independently of the module: (ndim, *spatial) -> (*spatial)."""
    return np.sqrt(sum((disp_vox[d].astype(np.float64) * s) ** 2 for d, s in enumerate(spacing_mm)))


def border_max(disp_vox: np.ndarray) -> float:
    """Largest absolute value of any component on any face of the grid."""
    return max(float(np.abs(np.take(disp_vox, [0, -1], axis=a + 1)).max()) for a in range(disp_vox.ndim - 1))


def make_field(case: tuple, seed: int, diffeomorphic: bool = True) -> np.ndarray:
    shape, spacing, grid, max_disp, sigma = case
    return synth.random_smooth_displacement(
        shape, spacing, np.random.default_rng(seed), grid_spacing_mm=grid, max_disp_mm=max_disp,
        smooth_sigma_mm=sigma, diffeomorphic=diffeomorphic,
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("diffeomorphic", [True, False])
def test_field_shape_max_and_border(case: tuple, diffeomorphic: bool) -> None:
    shape, spacing, _, max_disp, _ = case
    disp = make_field(case, seed=3, diffeomorphic=diffeomorphic)
    assert disp.shape == (len(shape), *shape) and disp.dtype == np.float32
    assert magnitude_mm(disp, spacing).max() == pytest.approx(max_disp, rel=1e-5)
    assert border_max(disp) < 1e-6
    # the field is not concentrated in a few voxels: a sizeable part moves more than a quarter of the max
    assert np.mean(magnitude_mm(disp, spacing) > max_disp / 4) > 0.2


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_field_is_deterministic(case: tuple) -> None:
    first, again, other = make_field(case, 7), make_field(case, 7), make_field(case, 8)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1.0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_diffeomorphic_field_has_positive_jacobian(case: tuple) -> None:
    for seed in range(3):
        detj = detj_numpy(make_field(case, seed))
        assert detj.min() > 0
        assert detj.max() > 1.05 and detj.min() < 0.95  # it does expand and compress


def test_diffeomorphic_integration_removes_folding() -> None:
    """A steep field that folds as a plain displacement stays invertible as a velocity field."""
    case = ((40, 48), (1.0, 1.0), 10.0, 8.0, 2.0)
    plain = make_field(case, seed=1, diffeomorphic=False)
    diffeo = make_field(case, seed=1, diffeomorphic=True)
    assert detj_numpy(plain).min() < 0
    assert detj_numpy(diffeo).min() > 0
    assert synth.min_jacobian_determinant(diffeo) == pytest.approx(detj_numpy(diffeo).min(), abs=1e-5)


def test_folding_beyond_the_grid_resolution_is_reported() -> None:
    with pytest.raises(InputError, match="max_disp_mm=20.0 folds the grid"):
        synth.random_smooth_displacement(
            (40, 48), (1.0, 1.0), np.random.default_rng(1), grid_spacing_mm=8.0, max_disp_mm=20.0, smooth_sigma_mm=0.0
        )


def test_integrate_constant_velocity_is_the_translation() -> None:
    velocity = np.zeros((3, 6, 7, 8))
    velocity[0], velocity[1], velocity[2] = 0.3, -1.7, 2.2
    np.testing.assert_allclose(synth.integrate_velocity(velocity), velocity, atol=1e-12)
    np.testing.assert_array_equal(synth.integrate_velocity(np.zeros((2, 5, 5))), 0.0)


def test_smooth_field_keeps_linear_fields_and_border_values() -> None:
    i, j = np.meshgrid(np.arange(20.0), np.arange(15.0), indexing="ij")
    ramp = np.stack([2.0 * i - 0.5 * j + 3.0])
    np.testing.assert_allclose(synth.smooth_field(ramp, (1.0, 2.0), sigma_mm=3.0), ramp, atol=1e-9)
    noisy = np.zeros((2, 20, 15))
    noisy[:, 1:-1, 1:-1] = np.random.default_rng(0).normal(size=(2, 18, 13))
    smoothed = synth.smooth_field(noisy, (1.0, 2.0), sigma_mm=3.0)
    assert border_max(smoothed) < 1e-12
    assert 0 < smoothed.std() < 0.5 * noisy.std()


def test_spline_upsampling_matrix_interpolates_control_values() -> None:
    matrix = synth.spline_upsampling_matrix(4, 10)  # control points land on outputs 0, 3, 6, 9
    assert matrix.shape == (10, 4)
    np.testing.assert_allclose(matrix[[0, 3, 6, 9]], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_control_grid_shape() -> None:
    # extents 99 mm and 19 mm at 10 mm -> 11 and 3 (minimum) points
    assert synth.control_grid_shape((100, 20), (1.0, 1.0), 10.0) == (11, 3)
    assert synth.control_grid_shape((51, 41, 3), (2.0, 2.0, 2.0), 20.0) == (6, 5, 3)


def test_intensity_transform_analytic_gamma() -> None:
    image = np.linspace(-1.0, 3.0, 5 * 6 * 4).reshape(5, 6, 4)
    out = synth.random_intensity_transform(
        image, np.random.default_rng(0), gamma_range=(2.0, 2.0), bias_field_strength=0.0, noise_std=0.0
    )
    np.testing.assert_allclose(out, -1.0 + 4.0 * ((image + 1.0) / 4.0) ** 2, atol=1e-6)
    identity = synth.random_intensity_transform(
        image, np.random.default_rng(0), gamma_range=(1.0, 1.0), bias_field_strength=0.0, noise_std=0.0
    )
    np.testing.assert_allclose(identity, image, atol=1e-6)


def test_intensity_transform_range_and_determinism() -> None:
    rng = np.random.default_rng(5)
    image = rng.uniform(10.0, 250.0, size=(30, 40)).astype(np.float32)
    first = synth.random_intensity_transform(image, np.random.default_rng(1))
    again = synth.random_intensity_transform(image, np.random.default_rng(1))
    other = synth.random_intensity_transform(image, np.random.default_rng(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and first.shape == image.shape
    assert first.min() >= image.min() and first.max() <= image.max()
    # gamma in [0.8, 1.25] and a +-10 % bias keep the image strongly correlated with the input
    assert np.corrcoef(first.ravel(), image.ravel())[0, 1] > 0.9
    assert np.abs(first - image).max() > 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (40,), "spacing_mm": (1.0,)}, "shape"),
        ({"shape": (40, 2), "spacing_mm": (1.0, 1.0)}, "shape"),
        ({"spacing_mm": (1.0,)}, "spacing_mm"),
        ({"spacing_mm": (1.0, -1.0)}, "spacing_mm"),
        ({"max_disp_mm": 0.0}, "max_disp_mm"),
        ({"grid_spacing_mm": float("nan")}, "grid_spacing_mm"),
        ({"smooth_sigma_mm": -1.0}, "smooth_sigma_mm"),
        ({"rng": 0}, "rng must be a numpy.random.Generator"),
    ],
)
def test_displacement_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    args = {"shape": (40, 48), "spacing_mm": (1.0, 1.0), "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(InputError, match=message):
        synth.random_smooth_displacement(**args)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.ones((5, 5)), {}, "constant"),
        (np.full((5, 5), np.nan), {}, "finite"),
        (np.arange(25.0).reshape(5, 5), {"gamma_range": (1.2, 0.8)}, "gamma_range"),
        (np.arange(25.0).reshape(5, 5), {"noise_std": -0.1}, "noise_std"),
    ],
)
def test_intensity_transform_rejects_bad_input(image: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        synth.random_intensity_transform(image, np.random.default_rng(0), **kwargs)


def _lpi_reference() -> tuple[Image, np.ndarray]:
    """A 3D grid stored L-P-I (flipped i, j, k) at 2 x 2 x 2.5 mm, with a box 'lung' mask."""
    affine = np.diag([-2.0, -2.0, -2.5, 1.0])
    affine[:3, 3] = [60.0, 50.0, 90.0]
    shape = (40, 36, 48)
    mask = np.zeros(shape, bool)
    mask[8:32, 8:28, 10:40] = True
    return Image(np.zeros(shape, np.float32), affine), mask


def test_respiratory_field_rises_at_the_diaphragm_and_vanishes_at_the_apex() -> None:
    reference, mask = _lpi_reference()
    disp = synth.respiratory_displacement(reference, np.random.default_rng(4), mask, local_max_disp_mm=0.0)
    mm = np.einsum("rc,c...->r...", reference.affine[:3, :3], disp.astype(np.float64))  # RAS mm
    # k = 39 is the most inferior lung slice (the affine flips k: S = 90 - 2.5 k), k = 10 the apex
    shift = mm[2][:, :, 39]
    assert np.allclose(shift, shift.flat[0]) and 30.0 * 0.8 <= shift.flat[0] <= 30.0 * 1.1
    assert np.allclose(mm[2][:, :, 10], 0.0, atol=1e-6)
    np.testing.assert_allclose(mm[2][0, 0, 10:40], shift.flat[0] * np.arange(30) / 29, atol=1e-4)
    assert np.allclose(mm[2][:, :, 45], shift.flat[0])  # below the diaphragm: the full shift
    # transversal contraction towards the mask's centre, proportional to the weight
    x_ras = 60.0 - 2.0 * np.arange(40)
    centre = x_ras[8:32].mean()
    ratio = mm[0][:, 5, 39] / (x_ras - centre)
    assert np.allclose(ratio, ratio[0]) and -0.12 * 1.1 <= ratio[0] <= -0.12 * 0.8
    assert synth.min_jacobian_determinant(disp) > 0


def test_respiratory_field_is_seeded_and_checks_its_input() -> None:
    reference, mask = _lpi_reference()
    first = synth.respiratory_displacement(reference, np.random.default_rng(5), mask)
    np.testing.assert_array_equal(first, synth.respiratory_displacement(reference, np.random.default_rng(5), mask))
    assert synth.min_jacobian_determinant(first) > 0
    with pytest.raises(InputError, match="3D"):
        synth.respiratory_displacement(Image(np.zeros((8, 8), np.float32), np.eye(4)), np.random.default_rng(0))
    with pytest.raises(InputError, match="lung_mask"):
        synth.respiratory_displacement(reference, np.random.default_rng(0), np.zeros(reference.shape, bool))
    with pytest.raises(InputError, match="folds"):
        synth.respiratory_displacement(reference, np.random.default_rng(0), mask, shift_mm=400.0, local_max_disp_mm=0.0)


# -- mixed frequency ---------------------------------------------------------------------------

# (shape, spacing_mm, grid_spacings_mm, max_disp_mm): one 2D and one anisotropic 3D grid
MIXED_CASES = [
    ((64, 72), (1.0, 1.0), (40.0, 20.0, 10.0), 6.0),
    ((24, 30, 20), (2.0, 1.5, 2.5), (40.0, 16.0), 5.0),
]


def make_mixed(case: tuple, seed: int, **kwargs) -> np.ndarray:
    shape, spacing, levels, max_disp = case
    return synth.mixed_frequency_displacement(
        shape, spacing, np.random.default_rng(seed), grid_spacings_mm=levels, max_disp_mm=max_disp, **kwargs
    )


@pytest.mark.parametrize("case", MIXED_CASES, ids=IDS)
@pytest.mark.parametrize("diffeomorphic", [True, False])
def test_mixed_field_max_border_and_jacobian(case: tuple, diffeomorphic: bool) -> None:
    shape, spacing, _, max_disp = case
    for seed in range(2):
        disp = make_mixed(case, seed, diffeomorphic=diffeomorphic)
        assert disp.shape == (len(shape), *shape) and disp.dtype == np.float32
        assert magnitude_mm(disp, spacing).max() == pytest.approx(max_disp, rel=1e-5)
        assert border_max(disp) < 1e-6
        if diffeomorphic:
            assert detj_numpy(disp).min() > 0


@pytest.mark.parametrize("case", MIXED_CASES, ids=IDS)
def test_mixed_field_border_moves_when_not_pinned(case: tuple) -> None:
    disp = make_mixed(case, 0, zero_border=False)
    assert border_max(disp) > 0.05
    assert magnitude_mm(disp, case[1]).max() == pytest.approx(case[3], rel=1e-5)


def test_mixed_field_is_seeded() -> None:
    case = MIXED_CASES[0]
    np.testing.assert_array_equal(make_mixed(case, 4), make_mixed(case, 4))
    assert np.abs(make_mixed(case, 4) - make_mixed(case, 5)).max() > 0.5


def test_mixed_field_with_one_level_is_the_single_frequency_field() -> None:
    mixed = synth.mixed_frequency_displacement(
        (40, 48), (1.0, 1.0), np.random.default_rng(3), grid_spacings_mm=(10.0,), max_disp_mm=8.0, smooth_sigma_mm=2.0
    )
    single = make_field(CASES[0], seed=3)
    np.testing.assert_allclose(mixed, single, atol=1e-5)


def test_mixed_field_puts_fine_motion_at_the_edges_of_the_structure() -> None:
    """A square image: the 8 mm level lives near the square's outline, the far field is the coarse bump."""
    image = np.zeros((64, 64))
    image[20:44, 20:44] = 1.0
    outline = ndimage.binary_dilation(image > 0) ^ ndimage.binary_erosion(image > 0)
    distance = ndimage.distance_transform_edt(~outline)
    inner = np.zeros(image.shape, bool)
    inner[6:-6, 6:-6] = True
    for seed in range(3):
        disp = synth.mixed_frequency_displacement(
            image.shape, (1.0, 1.0), np.random.default_rng(seed), grid_spacings_mm=(80.0, 8.0), max_disp_mm=4.0,
            region_fraction=0.15, structure=image, smooth_sigma_mm=0.0,
        )
        high_pass = np.sqrt(np.sum((disp - ndimage.gaussian_filter(disp, (0, 4, 4))) ** 2, axis=0))
        near, far = high_pass[(distance <= 3) & inner].mean(), high_pass[(distance >= 12) & inner].mean()
        assert near > 5 * far


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid_spacings_mm": ()}, "grid_spacings_mm is empty"),
        ({"grid_spacings_mm": (40.0, -1.0)}, "grid_spacings_mm"),
        ({"region_fraction": 0.0}, "region_fraction"),
        ({"region_fraction": 1.5}, "region_fraction"),
        ({"structure": np.zeros((40, 48))}, "structure"),
        ({"structure": np.random.default_rng(0).normal(size=(40, 40))}, "structure"),
        ({"max_disp_mm": -2.0}, "max_disp_mm"),
    ],
)
def test_mixed_field_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        synth.mixed_frequency_displacement((40, 48), (1.0, 1.0), np.random.default_rng(0), **kwargs)
