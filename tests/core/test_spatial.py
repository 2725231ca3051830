"""Grids, warping, composition and Jacobians on analytic fields (2D and 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from registration_core.core import spatial
from registration_core.core.io import Image, image_to_sitk, load_itk_displacement_transform, save_displacement


def voxel_grid(shape: tuple[int, ...]) -> np.ndarray:
    """Voxel coordinates (ndim, *shape) in array order."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def affine_disp(matrix: np.ndarray, shape: tuple[int, ...], offset: np.ndarray | None = None) -> np.ndarray:
    """u(x) = (A - I) x + b in voxels, (ndim, *shape)."""
    ndim = len(shape)
    u = np.einsum("rc,c...->r...", matrix - np.eye(ndim), voxel_grid(shape))
    if offset is not None:
        u += np.asarray(offset).reshape(ndim, *([1] * ndim))
    return u


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_identity_grid_spans_minus_one_to_one(shape: tuple[int, ...]) -> None:
    grid = spatial.identity_grid_norm(shape)[0]
    assert grid.shape == (len(shape), *shape)
    for d, n in enumerate(shape):
        line = grid[d].movedim(d, 0).reshape(n, -1)[:, 0]
        np.testing.assert_allclose(line.numpy(), np.linspace(-1, 1, n), atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_voxel_normalised_round_trip(shape: tuple[int, ...]) -> None:
    disp = torch.randn(1, len(shape), *shape, dtype=torch.float64)
    back = spatial.disp_norm_to_vox(spatial.disp_vox_to_norm(disp, shape), shape)
    torch.testing.assert_close(back, disp)
    # one voxel along axis d is 2 / (n_d - 1) in normalised units
    unit = torch.zeros_like(disp)
    unit[:, 0] = 1.0
    assert float(spatial.disp_vox_to_norm(unit, shape)[0, 0].flatten()[0]) == pytest.approx(2 / (shape[0] - 1))


@pytest.mark.parametrize("shape", [(12, 10), (8, 9, 10)])
def test_zero_displacement_is_identity(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    warped = spatial.warp_array(image, np.zeros((len(shape), *shape), np.float32))
    np.testing.assert_allclose(warped, image, atol=1e-6)


@pytest.mark.parametrize("shape", [(12, 10), (8, 9, 10)])
def test_integer_translation_shifts_the_moving_image(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    image = rng.random(shape).astype(np.float32)
    disp = np.zeros((len(shape), *shape), np.float32)
    disp[-1] = 2.0  # warped(x) = moving(x + 2 e_last)
    warped = spatial.warp_array(image, disp)
    np.testing.assert_allclose(warped[..., :-2], image[..., 2:], atol=1e-6)


def test_half_voxel_translation_interpolates_linearly() -> None:
    ramp = np.tile(np.arange(10, dtype=np.float32) * 3.0, (6, 1))
    disp = np.zeros((2, 6, 10), np.float32)
    disp[1] = 0.5
    warped = spatial.warp_array(ramp, disp)
    np.testing.assert_allclose(warped[:, :-1], ramp[:, :-1] + 1.5, atol=1e-5)


def test_nearest_warp_keeps_label_values() -> None:
    labels = np.random.default_rng(2).integers(0, 40, size=(9, 11, 7)).astype(np.int32)
    disp = np.random.default_rng(3).normal(scale=1.5, size=(3, 9, 11, 7)).astype(np.float32)
    warped = spatial.warp_array(labels, disp, mode="nearest")
    assert warped.dtype == np.int32
    assert set(np.unique(warped)) <= set(np.unique(labels))
    with pytest.raises(ValueError, match="nearest"):
        spatial.warp_array(labels, disp, mode="linear")


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_of_translations_adds_them(ndim: int) -> None:
    shape = (9, 10, 11)[:ndim]
    a = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[:, 0] = 1.0
    b[:, -1] = -2.0
    torch.testing.assert_close(spatial.compose(a, b), a + b)


def test_compose_of_affines_is_their_product() -> None:
    shape = (16, 17, 18)
    A = np.array([[1.05, 0.02, 0.0], [0.0, 0.97, 0.03], [0.01, 0.0, 1.02]])
    B = np.array([[0.98, 0.0, 0.02], [0.03, 1.01, 0.0], [0.0, 0.02, 0.99]])
    outer = torch.from_numpy(affine_disp(A, shape))[None]
    inner = torch.from_numpy(affine_disp(B, shape))[None]
    expected = affine_disp(A @ B, shape)
    got = spatial.compose(outer, inner)[0].numpy()
    inside = (slice(None),) + (slice(2, -2),) * 3  # where inner(x) stays inside the grid
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-9)


@pytest.mark.parametrize("scheme", ["central", "forward"])
@pytest.mark.parametrize(
    "matrix",
    [np.array([[1.2, 0.3], [-0.1, 0.8]]), np.array([[1.1, 0.2, 0.0], [0.05, 0.9, 0.1], [0.0, -0.2, 1.3]])],
    ids=["2d", "3d"],
)
def test_jacobian_determinant_of_an_affine_map(matrix: np.ndarray, scheme: str) -> None:
    shape = (6, 7, 8)[: len(matrix)]
    disp = torch.from_numpy(affine_disp(matrix, shape, offset=np.full(len(matrix), 0.7)))[None]
    det = spatial.jacobian_determinant(disp, scheme)
    expected_shape = shape if scheme == "central" else tuple(n - 1 for n in shape)
    assert det.shape == (1, *expected_shape)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(matrix), rtol=1e-12)


def test_jacobian_determinant_matches_numpy_gradient_on_a_random_field() -> None:
    disp = np.random.default_rng(4).normal(size=(3, 6, 7, 8))
    grads = [np.gradient(disp[r]) for r in range(3)]
    jac = np.array([[grads[r][c] + (r == c) for c in range(3)] for r in range(3)])
    expected = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    got = spatial.jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_forward_differences_and_their_gradient() -> None:
    field = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    diffs = spatial.forward_differences(field)
    torch.testing.assert_close(diffs[1][:, :, :, :-1], field[:, :, :, 1:] - field[:, :, :, :-1])
    assert float(diffs[1][:, :, :, -1].detach().abs().max()) == 0.0
    for axis in range(3):
        assert torch.autograd.gradcheck(lambda t: spatial.forward_differences(t)[axis], (field,))


def test_mm_conversion_uses_the_affine() -> None:
    affine = np.array([[0, 0, 2.0, 5], [-1.5, 0, 0, 1], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    disp = np.random.default_rng(5).normal(size=(3, 4, 5, 6)).astype(np.float32)
    mm = spatial.disp_vox_to_mm(disp, affine)
    np.testing.assert_allclose(mm[:, 1, 2, 3], affine[:3, :3] @ disp[:, 1, 2, 3], rtol=1e-5)
    np.testing.assert_allclose(spatial.disp_mm_to_vox(mm, affine), disp, rtol=1e-4, atol=1e-5)


def test_sample_displacement_at_points() -> None:
    A = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]])
    disp = affine_disp(A, (6, 7, 8))
    points = np.array([[1.5, 2.25, 3.0], [4.0, 0.5, 6.75]])
    expected = points @ (A - np.eye(3)).T
    np.testing.assert_allclose(spatial.sample_displacement_at(disp, points), expected, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_simpleitk_applies_our_displacement_exactly_as_our_warp(tmp_path, ndim: int) -> None:
    """A field written by save_displacement and applied by SimpleITK equals spatial.warp_array."""
    shape = (20, 22, 18)[:ndim]
    rng = np.random.default_rng(6)
    # anisotropic, rotated/flipped grid with an offset origin
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0.0, -1.2, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 2.0]])
    if ndim == 2:
        affine[:3, :3] = np.diag([1.3, 0.7, 1.0])
    affine[:3, 3] = [10.0, -4.0, 3.0]
    coords = voxel_grid(shape)
    moving = np.sin(coords[0] / 3.0) + np.cos(coords[-1] / 4.0) + 0.1 * coords[1]
    moving_img = Image(moving.astype(np.float32), affine)
    disp = np.stack([2.0 * np.sin(coords[(d + 1) % ndim] / 5.0) for d in range(ndim)]).astype(np.float32)
    disp += rng.normal(scale=0.2, size=disp.shape).astype(np.float32)
    path = tmp_path / "displacement.nii.gz"
    save_displacement(disp, moving_img, path)
    transform = load_itk_displacement_transform(path, moving_img)
    moving_itk = image_to_sitk(moving_img)
    warped_itk = sitk.Resample(moving_itk, moving_itk, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped_sitk = sitk.GetArrayFromImage(warped_itk).transpose(*reversed(range(ndim)))
    ours = spatial.warp_array(moving_img.data, disp)
    targets = coords + disp  # compare where the sampled point is inside the image (no padding differences)
    inside = np.all([(targets[d] >= 0) & (targets[d] <= shape[d] - 1) for d in range(ndim)], axis=0)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(warped_sitk[inside], ours[inside], atol=2e-4)
