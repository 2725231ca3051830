"""Box filters and losses against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from registration_core.core import filters, losses


@pytest.mark.parametrize("shape,window", [((1, 2, 13, 11), 5), ((1, 1, 9, 10, 8), 3), ((2, 1, 7, 9, 6), 7), ((1, 1, 6, 5), 15), ((1, 1, 4, 9), 9)])
def test_box_sum_matches_zero_padded_convolution(shape: tuple[int, ...], window: int) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    ndim = len(shape) - 2
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    weight = torch.ones(shape[1], 1, *([window] * ndim), dtype=torch.float64)
    expected = conv(x, weight, padding=window // 2, groups=shape[1])
    torch.testing.assert_close(filters.box_sum(x, window), expected)


def test_box_sum_gradient_is_exact() -> None:
    x = torch.randn(1, 2, 8, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: filters.box_sum(t, (3, 5, 1)), (x,))


def test_box_sum_rejects_even_windows() -> None:
    with pytest.raises(ValueError, match="odd"):
        filters.box_sum(torch.zeros(1, 1, 5, 5), 4)


def test_gaussian_kernel_is_normalised_and_flat_for_small_nsig() -> None:
    flat = filters.gaussian_kernel_1d(15, 0.1)
    bell = filters.gaussian_kernel_1d(15, 3.0)
    assert flat.sum() == pytest.approx(1.0) and bell.sum() == pytest.approx(1.0)
    assert flat.max() / flat.min() < 1.01  # the reference's GK is nearly a box
    assert bell[7] / bell[0] > 20


def test_gaussian_smooth_preserves_constants_inside() -> None:
    x = torch.ones(1, 1, 20, 20, dtype=torch.float64)
    out = filters.gaussian_smooth(x, 5, 2.0)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2])


def _ncc_direct(a: np.ndarray, b: np.ndarray, window: int | tuple[int, ...], center: tuple[int, ...]) -> float:
    """Squared NCC of two patches around ``center`` (fully inside; one window for every axis or one
    per axis), by hand."""
    windows = (window,) * len(center) if isinstance(window, int) else window
    sl = tuple(slice(c - w // 2, c + w // 2 + 1) for c, w in zip(center, windows))
    pa, pb = a[sl].ravel(), b[sl].ravel()
    cross = ((pa - pa.mean()) * (pb - pb.mean())).sum()
    return cross**2 / (((pa - pa.mean()) ** 2).sum() * ((pb - pb.mean()) ** 2).sum() + 1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_local_ncc_matches_a_direct_patch_computation(ndim: int) -> None:
    rng = np.random.default_rng(0)
    shape = (12, 13, 11)[:ndim]
    a = rng.random(shape)
    b = 0.5 * a + 0.5 * rng.random(shape)
    ncc = losses.LocalNCC(torch.from_numpy(a)[None, None], window=5)
    cc = ncc.cc_map(torch.from_numpy(b)[None, None])[0, 0].numpy()
    center = (5, 6, 5)[:ndim]
    assert cc[center] == pytest.approx(_ncc_direct(a, b, 5, center), rel=1e-9)


def test_local_ncc_with_one_window_per_axis_matches_the_direct_patch_and_its_gradient() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((12, 13, 11))
    b = 0.5 * a + 0.5 * rng.random(a.shape)
    ncc = losses.LocalNCC(torch.from_numpy(a)[None, None], window=(3, 7, 5))
    assert ncc.n == 105.0
    cc = ncc.cc_map(torch.from_numpy(b)[None, None])[0, 0].numpy()
    assert cc[5, 6, 5] == pytest.approx(_ncc_direct(a, b, (3, 7, 5), (5, 6, 5)), rel=1e-9)
    warped = torch.from_numpy(b)[None, None].requires_grad_()
    fused, = torch.autograd.grad(ncc(warped), warped)
    plain, = torch.autograd.grad(1.0 - ncc.cc_map(warped).mean(), warped)
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="ncc window"):
        losses.LocalNCC(torch.from_numpy(a)[None, None], window=(3, 7))


def test_ncc_loss_is_zero_for_identical_and_invariant_to_affine_intensity() -> None:
    img = torch.rand(1, 1, 16, 16, 16)
    assert float(losses.ncc_loss(img, img, 9)) < 1e-3
    assert float(losses.ncc_loss(img, 3.0 * img, 9)) < 1e-3
    # zero padding breaks offset invariance only where the window leaves the image
    cc = losses.LocalNCC(img, 9).cc_map(3.0 * img + 2.0)
    assert float(1 - cc[..., 4:-4, 4:-4, 4:-4].mean()) < 1e-3
    assert float(losses.ncc_loss(img, torch.rand_like(img), 9)) > 0.5


def test_mse_and_diffusion_losses_on_known_fields() -> None:
    assert float(losses.mse_loss(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0))) == 4.0
    shape = (6, 7)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    disp = 0.5 * grid[None]  # du_r/dx_c = 0.5 delta_rc: forward differences 0.5 on the diagonal only
    # per axis: mean over both channels of the squared difference = (0.25 + 0) / 2
    assert float(losses.diffusion_loss(disp)) == pytest.approx(2 * 0.125)
    assert float(losses.diffusion_loss(torch.ones(1, 2, 5, 5))) == 0.0


def test_negative_jacobian_penalty() -> None:
    shape = (6, 7, 8)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    shrink = (-0.8 * grid)[None]  # detJ = 0.2**3 = 0.008 everywhere
    assert float(losses.neg_jacobian_loss(shrink)) == pytest.approx((0.5 - 0.008) ** 2)
    assert float(losses.neg_jacobian_loss(shrink, threshold=0.0)) == 0.0
    assert float(losses.neg_jacobian_loss(torch.zeros(1, 3, *shape))) == 0.0


def test_velocity_magnitude() -> None:
    v = torch.zeros(2, 1, 3, 4, 4, 4)
    v[:, :, 0] = 3.0
    v[:, :, 1] = 4.0
    assert float(losses.velocity_magnitude_loss(v, channel_dim=2)) == pytest.approx(25.0)


@pytest.mark.parametrize("shape", [(2, 1, 9, 11, 10), (1, 1, 17, 13)])
def test_local_ncc_written_out_gradient_matches_autograd(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(shape, dtype=torch.float64, generator=gen)
    warped = torch.rand(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    ncc = losses.LocalNCC(fixed, 5)
    assert torch.autograd.gradcheck(lambda w: ncc(w), (warped,))
    fused, = torch.autograd.grad(ncc(warped), warped)
    plain, = torch.autograd.grad(1.0 - ncc.cc_map(warped).mean(), warped)
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("shape", [(2, 2, 9, 11), (1, 3, 7, 6, 5)])
def test_jacobian_and_diffusion_in_one_pass_equal_the_separate_losses(shape: tuple[int, ...]) -> None:
    """Values and gradients of the fused pair against :func:`neg_jacobian_loss` and :func:`diffusion_loss`
    through autograd, on a field large enough to fold (some detJ < 0.5), and gradcheck in float64."""
    gen = torch.Generator().manual_seed(1)
    disp = (0.8 * torch.randn(shape, dtype=torch.float64, generator=gen)).requires_grad_()
    neg_jacobian, diffusion = losses.jacobian_diffusion_losses(disp, 0.5)
    assert float(neg_jacobian.detach()) > 0.0
    torch.testing.assert_close(neg_jacobian, losses.neg_jacobian_loss(disp, 0.5), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(diffusion, losses.diffusion_loss(disp), rtol=1e-12, atol=0.0)
    fused, = torch.autograd.grad(2.5 * neg_jacobian + 0.05 * diffusion, disp)
    plain, = torch.autograd.grad(2.5 * losses.neg_jacobian_loss(disp, 0.5) + 0.05 * losses.diffusion_loss(disp), disp)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda d: losses.jacobian_diffusion_losses(d, 0.5), (disp,))


def test_separable_field_map_equals_upsampling_then_filtering() -> None:
    gen = torch.Generator().manual_seed(1)
    coarse, fine = (5, 7, 4), (19, 27, 13)
    v = torch.randn(1, 3, *coarse, dtype=torch.float64, generator=gen)
    up = torch.nn.functional.interpolate(v, size=fine, mode="trilinear")
    for filtered, mats in (
        (filters.box_mean(up, 5), [filters.box_mean_matrix(n, 5) for n in fine]),
        (filters.gaussian_smooth(up, 5, 2.0), [filters.gaussian_matrix(n, 5, 2.0) for n in fine]),
    ):
        ops = [m @ filters.linear_upsample_matrix(c, n) for m, c, n in zip(mats, coarse, fine)]
        torch.testing.assert_close(filters.apply_separable(v, ops), filtered, rtol=1e-10, atol=1e-12)
