"""Separable smoothing filters on (B, C, *spatial) tensors, 2D or 3D, zero padded, same-size output.

The box filter uses running sums (cumulative sums), so its cost does not depend on the window:
this is what keeps NODEO's 15-voxel smoothing and the 21-voxel NCC window cheap in 3D.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats


def _box_sum_axis(x: torch.Tensor, axis: int, window: int) -> torch.Tensor:
    """Sum over a centred window of odd length ``window`` along ``axis``, zero padded (no autograd).

    With ``c`` the cumulative sum, ``out[i] = c[min(i + h, n - 1)] - c[i - h - 1]`` (0 for a negative
    index), written into one fresh tensor without padding copies.
    """
    n = x.shape[axis]
    half = window // 2
    csum = torch.cumsum(x, dim=axis)
    out = torch.empty_like(x)
    reach = min(half, n - 1)
    out.narrow(axis, 0, n - reach).copy_(csum.narrow(axis, reach, n - reach))
    out.narrow(axis, n - reach, reach).copy_(csum.narrow(axis, n - 1, 1).expand_as(out.narrow(axis, n - reach, reach)))
    if half + 1 < n:
        out.narrow(axis, half + 1, n - half - 1).sub_(csum.narrow(axis, 0, n - half - 1))
    return out


def _box_sum_all(x: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
    for axis, w in enumerate(windows, start=2):
        if w > 1:
            x = _box_sum_axis(x, axis, w)
    return x


class _BoxSum(torch.autograd.Function):
    """Zero-padded centred box sum; it is self-adjoint (odd windows), so its gradient is itself.

    Differentiating through cumsum/narrow instead costs several full-size temporaries per axis.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, windows: tuple[int, ...]) -> torch.Tensor:
        ctx.windows = windows
        return _box_sum_all(x, windows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _BoxSum.apply(grad, ctx.windows), None


def box_sum(x: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """Windowed sums of ``x`` (B, C, *spatial) over an odd box ``window`` (per axis or one for all).

    Zero padded: near the borders the window covers fewer voxels. Differentiable (twice).
    """
    ndim = x.dim() - 2
    windows = (window,) * ndim if isinstance(window, int) else tuple(window)
    for w in windows:
        if w < 1 or w % 2 == 0:
            raise ValueError(f"box window must be a positive odd integer, got {w}")
    return _BoxSum.apply(x, windows)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-padded moving average over a ``window``^ndim box (``count_include_pad`` semantics)."""
    ndim = x.dim() - 2
    return box_sum(x, window) / float(window**ndim)


def gaussian_kernel_1d(window: int, nsig: float) -> np.ndarray:
    """Normalised 1D Gaussian weights: the normal CDF differenced over ``window`` bins spanning ``[-nsig, nsig]``.

    ``nsig`` is the half-width of the window in standard deviations; a small value (NODEO's reference
    uses 0.1) gives nearly flat weights, 2-3 a bell shape.
    """
    edges = np.linspace(-nsig, nsig, window + 1)
    weights = np.diff(stats.norm.cdf(edges))
    return weights / weights.sum()


def separable_filter(x: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x`` (B, C, *spatial) with ``kernel_1d`` (odd length) along each axis."""
    ndim = x.dim() - 2
    channels = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    half = kernel_1d.numel() // 2
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = kernel_1d.numel()
        weight = kernel_1d.to(x).view(1, 1, *shape).expand(channels, 1, *shape)
        padding = [0] * ndim
        padding[axis] = half
        x = conv(x, weight, padding=padding, groups=channels)
    return x


def gaussian_smooth(x: torch.Tensor, window: int, nsig: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` (B, C, *spatial) with :func:`gaussian_kernel_1d` weights."""
    kernel = torch.from_numpy(gaussian_kernel_1d(window, nsig))
    return separable_filter(x, kernel)


def linear_upsample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1D linear interpolation from ``n_in`` to ``n_out`` samples,
    ``align_corners=False`` (the per-axis factor of ``F.interpolate(..., mode="(bi/tri)linear", size=...)``)."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # (1, n_in channels, n_in samples)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def box_mean_matrix(n: int, window: int) -> torch.Tensor:
    """(n, n) float64 matrix of the zero-padded 1D moving average over ``window`` (odd) samples."""
    idx = torch.arange(n)
    return ((idx[:, None] - idx[None, :]).abs() <= window // 2).to(torch.float64) / window


def gaussian_matrix(n: int, window: int, nsig: float) -> torch.Tensor:
    """(n, n) float64 matrix of the zero-padded 1D filter with :func:`gaussian_kernel_1d` weights."""
    kernel = torch.from_numpy(gaussian_kernel_1d(window, nsig))
    idx = torch.arange(n)
    offset = idx[None, :] - idx[:, None] + window // 2
    inside = (offset >= 0) & (offset < window)
    return torch.where(inside, kernel[offset.clamp(0, window - 1)], torch.zeros((), dtype=torch.float64))


def apply_separable(x: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x`` (B, C, *m) -> (B, C, *n): matrix ``matrices[d]`` (n_d, m_d) applied along spatial axis ``d``.

    One batched GEMM per axis on contiguous views (differentiable); a separable linear filter or
    resampling of the whole field costs ``prod(n) * m_last`` multiply-adds for its last axis.
    """
    batch, channels = x.shape[:2]
    spatial = list(x.shape[2:])
    lead = batch * channels
    for d, mat in enumerate(matrices):
        before = lead * math.prod(spatial[:d])
        after = math.prod(spatial[d + 1:])
        if after == 1:  # last axis: one GEMM (rows, m) @ (m, n) instead of a batch of matrix-vector products
            x = x.reshape(before, spatial[d]) @ mat.T
        else:
            x = torch.matmul(mat, x.reshape(before, spatial[d], after))
        spatial[d] = mat.shape[0]
    return x.reshape(batch, channels, *spatial)
