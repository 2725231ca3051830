"""Similarity and regularisation losses on (B, C, *spatial) tensors, 2D or 3D, float32.

Images are compared on the fixed grid; displacements are ``disp_vox`` (B, ndim, *spatial) in voxels.
:func:`gradicon_loss` works on maps given as functions of point coordinates (any method with an
inverse map).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from registration_core.core.filters import _box_sum_all, box_sum
from registration_core.core.spatial import forward_difference_adjoint, forward_differences, jacobian_determinant


class LocalNCC:
    """Windowed (local) normalised cross-correlation against a fixed image.

    ``loss(warped) = 1 - mean(cc)`` with ``cc = cross^2 / (var_f * var_w + eps)`` over a box of
    ``window`` voxels per side (one odd count for every axis, or one per spatial axis; zero padded
    at the borders), the squared local NCC of VoxelMorph and NODEO. The window sums of the fixed
    image are computed once; each call costs three running-sum box filters whatever the window size.
    """

    def __init__(self, fixed: torch.Tensor, window: int | Sequence[int], eps: float = 1e-5) -> None:
        ndim = fixed.dim() - 2
        sizes = (window,) * ndim if isinstance(window, int) else tuple(int(w) for w in window)
        if len(sizes) != ndim or any(w < 1 or w % 2 == 0 for w in sizes):
            raise ValueError(f"ncc window must be a positive odd integer or {ndim} of them, got {window}")
        self.window = sizes
        """The window per spatial axis (voxels)."""
        self.eps = eps
        self.n = float(math.prod(sizes))
        self.fixed = fixed
        sums = box_sum(torch.cat([fixed, fixed * fixed], dim=1), sizes)
        self.sum_f, sum_f2 = sums.chunk(2, dim=1)
        self.var_f = (sum_f2 - self.sum_f * self.sum_f / self.n).clamp_min(0.0)

    def cc_map(self, warped: torch.Tensor) -> torch.Tensor:
        """Squared local correlation in [0, 1], shape (B, C, *spatial)."""
        sums = box_sum(torch.cat([warped, warped * warped, warped * self.fixed], dim=1), self.window)
        sum_w, sum_w2, sum_fw = sums.chunk(3, dim=1)
        cross = sum_fw - self.sum_f * sum_w / self.n
        var_w = (sum_w2 - sum_w * sum_w / self.n).clamp_min(0.0)
        return cross * cross / (self.var_f * var_w + self.eps)

    def __call__(self, warped: torch.Tensor) -> torch.Tensor:
        if self.fixed.requires_grad:  # the fused gradient treats the fixed image as a constant
            return 1.0 - self.cc_map(warped).mean()
        return _FusedNCC.apply(warped, self)


class _FusedNCC(torch.autograd.Function):
    """``1 - mean(cc)`` of :meth:`LocalNCC.cc_map` with its gradient written out (w.r.t. ``warped`` only).

    With ``D = var_f var_w + eps``, ``a = -2 cross / (N D)`` and ``b = cross^2 var_f / (N D^2)``
    (``N`` voxels, ``b = 0`` where ``var_w`` was clamped): ``dL/dw = box(g_w) + 2 w box(b) + f box(a)``,
    ``g_w = -(a sum_f + 2 b sum_w) / n``; one 3-channel box sum forward and one backward, and no
    autograd graph of full-size temporaries in between. Differentiable once.
    """

    @staticmethod
    def forward(ctx: Any, warped: torch.Tensor, ncc: LocalNCC) -> torch.Tensor:
        sums = _box_sum_all(torch.cat([warped, warped * warped, warped * ncc.fixed], dim=1), ncc.window)
        sum_w, sum_w2, sum_fw = sums.chunk(3, dim=1)
        cross = sum_fw - ncc.sum_f * sum_w / ncc.n
        var_raw = sum_w2 - sum_w * sum_w / ncc.n
        denom = ncc.var_f * var_raw.clamp_min(0.0) + ncc.eps
        cc = cross * cross / denom
        ctx.ncc = ncc
        ctx.save_for_backward(warped, sum_w, cross, var_raw, denom)
        return 1.0 - cc.mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        warped, sum_w, cross, var_raw, denom = ctx.saved_tensors
        ncc: LocalNCC = ctx.ncc
        scale = grad / cross.numel()
        a = cross.mul(-2.0 * scale).div_(denom)
        b = (cross * cross).mul_(ncc.var_f).div_(denom * denom).mul_(scale).masked_fill_(var_raw < 0, 0.0)
        g_w = (a * ncc.sum_f).add_(2.0 * b * sum_w).div_(-ncc.n)
        back = _box_sum_all(torch.cat([g_w, b, a], dim=1), ncc.window)
        bw, bw2, bfw = back.chunk(3, dim=1)
        return bw + 2.0 * warped * bw2 + ncc.fixed * bfw, None


def ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int) -> torch.Tensor:
    """``1 - mean(local NCC^2)`` of two (B, C, *spatial) images over a ``window``-voxel cube."""
    return LocalNCC(fixed, window)(warped)


def point_ncc_loss(fixed_values: torch.Tensor, warped_values: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean(NCC)`` of intensities sampled at points, (B, C, N) each: global NCC per (batch, channel) over N.

    ``NCC = cov / sqrt(var_f * var_w + eps)`` (Pearson correlation of the N samples), in [-1, 1];
    for methods that compare images at random points instead of on the grid (NePhi).
    """
    if fixed_values.shape != warped_values.shape or fixed_values.dim() != 3 or fixed_values.shape[-1] < 2:
        raise ValueError(
            f"point_ncc_loss: values must both be (B, C, N) with N >= 2, got {tuple(fixed_values.shape)} "
            f"and {tuple(warped_values.shape)}"
        )
    f = fixed_values - fixed_values.mean(dim=-1, keepdim=True)
    w = warped_values - warped_values.mean(dim=-1, keepdim=True)
    cov = (f * w).mean(dim=-1)
    ncc = cov / torch.sqrt(f.pow(2).mean(dim=-1) * w.pow(2).mean(dim=-1) + eps)
    return 1.0 - ncc.mean()


def mse_loss(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference of two (B, C, *spatial) images."""
    return F.mse_loss(warped, fixed)


def diffusion_loss(disp_vox: torch.Tensor) -> torch.Tensor:
    """Sum over axes of the mean squared forward difference of ``disp_vox`` (B, ndim, *spatial), voxel^2/voxel^2.

    Each mean runs over the differences that exist (n - 1 along the differenced axis).
    """
    total = disp_vox.new_zeros(())
    for axis, diff in enumerate(forward_differences(disp_vox), start=2):
        n = disp_vox.shape[axis]
        total = total + diff.pow(2).sum() / (diff.numel() * (n - 1) / n)
    return total


def bending_energy(field: torch.Tensor) -> torch.Tensor:
    """Bending energy of ``field`` (B, C, *spatial): ``sum_{i,j} (d_i d_j f)^2`` per component, i.e.
    ``sum_i (d_ii f)^2 + 2 sum_{i<j} (d_ij f)^2``, from second forward differences per voxel.

    Normalised as RegNet's code does: the differences that do not exist at the far borders count as
    0 and the sum is divided by ``B * C * voxels`` (the mean over the zero-padded full grid and the
    components). Units: those of ``field`` squared per voxel^4 (mm^2 for a field in mm on a 1 mm grid).
    An affine field has energy 0.
    """
    ndim = field.dim() - 2
    total = field.new_zeros(())
    for i in range(ndim):
        first = torch.diff(field, dim=2 + i)
        for j in range(i, ndim):
            total = total + (1.0 if i == j else 2.0) * torch.diff(first, dim=2 + j).pow(2).sum()
    return total / field.numel()


def neg_jacobian_loss(disp_vox: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``mean(relu(threshold - detJ)^2)`` of the map ``x + u(x)``, forward differences (NODEO's L_J)."""
    det = jacobian_determinant(disp_vox, scheme="forward")
    return F.relu(threshold - det).pow(2).mean()


def _cofactors(jac: list[list[torch.Tensor]], rows: int | None = None) -> list[list[torch.Tensor]]:
    """Signed cofactors ``C[r][c] = d det / d J[r][c]`` of a 2x2 or 3x3 matrix of fields, for the
    first ``rows`` rows (all by default; 3x3: the cyclic formula
    ``J[r+1][c+1] J[r+2][c+2] - J[r+1][c+2] J[r+2][c+1]``, indices mod 3)."""
    if len(jac) == 2:
        return [[jac[1][1], -jac[1][0]], [-jac[0][1], jac[0][0]]][:rows]
    return [
        [jac[(r + 1) % 3][(c + 1) % 3] * jac[(r + 2) % 3][(c + 2) % 3]
         - jac[(r + 1) % 3][(c + 2) % 3] * jac[(r + 2) % 3][(c + 1) % 3] for c in range(3)]
        for r in range(3 if rows is None else rows)
    ]


class _JacobianDiffusion(torch.autograd.Function):
    """:func:`neg_jacobian_loss` and :func:`diffusion_loss` of one ``disp_vox`` from one set of
    forward differences, with the gradient written out: ``dL_J / dJ[r][c] = -2 relu(t - det) C[r][c] / N``
    (cofactors ``C``, ``N`` voxels with all forward neighbours), ``dL_df / d diff_c = 2 diff_c / M_c``,
    then the forward differences' adjoint. Saves the differences and ``relu(t - det)`` only (the
    autograd graph of the determinant holds a dozen full-size products). Differentiable once.
    """

    @staticmethod
    def forward(ctx: Any, disp_vox: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        diffs = forward_differences(disp_vox)  # diffs[c]: (B, ndim, *spatial), d u_r / d x_c in channel r
        valid = (slice(None),) + tuple(slice(0, n - 1) for n in disp_vox.shape[2:])
        jac = [[diffs[c][:, r][valid] + (1.0 if r == c else 0.0) for c in range(len(diffs))] for r in range(len(diffs))]
        first_row = _cofactors(jac, rows=1)[0]
        det = sum(jac[0][c] * first_row[c] for c in range(len(diffs)))
        short = (threshold - det).clamp_min_(0.0)
        denoms = [d.numel() * (n - 1) / n for d, n in zip(diffs, disp_vox.shape[2:])]
        diffusion = sum(d.pow(2).sum() / m for d, m in zip(diffs, denoms))
        ctx.denoms = denoms
        ctx.save_for_backward(*diffs, short)
        return short.pow(2).mean(), diffusion

    @staticmethod
    def backward(ctx: Any, grad_j: torch.Tensor, grad_df: torch.Tensor) -> tuple[torch.Tensor, None]:
        *diffs, short = ctx.saved_tensors
        ndim = len(diffs)
        valid = (slice(None),) + tuple(slice(0, n - 1) for n in diffs[0].shape[2:])
        jac = [[diffs[c][:, r][valid] + (1.0 if r == c else 0.0) for c in range(ndim)] for r in range(ndim)]
        cof = _cofactors(jac)
        weight = short.mul(-2.0 * grad_j / short.numel())
        grad_u = None
        for c, (diff, denom) in enumerate(zip(diffs, ctx.denoms)):
            g = diff.mul(2.0 * grad_df / denom)
            for r in range(ndim):
                g[:, r][valid] += weight * cof[r][c]
            term = forward_difference_adjoint(g, c + 2)
            grad_u = term if grad_u is None else grad_u.add_(term)
        return grad_u, None


def jacobian_diffusion_losses(disp_vox: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neg_jacobian_loss(disp_vox, threshold), diffusion_loss(disp_vox))`` (``disp_vox``
    (B, ndim, *spatial), voxels; every axis >= 3) in one pass with a written-out gradient (NODEO's
    two regularisers; equal to the separate functions to float rounding)."""
    return _JacobianDiffusion.apply(disp_vox, threshold)


def velocity_magnitude_loss(velocities: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Mean over positions (and time) of the squared velocity magnitude ``|v|^2``.

    ``velocities``: (B, ndim, *spatial) with ``channel_dim=1``, or a stack over time (T, B, ndim, *spatial)
    with ``channel_dim=2``. Units are those of the velocities (NODEO: normalised coordinates per unit time).
    """
    return velocities.pow(2).sum(dim=channel_dim).mean()


PointMap = Callable[[torch.Tensor], torch.Tensor]
"""A spatial map evaluated pointwise: points (..., N, ndim) -> mapped points (..., N, ndim), same coordinates."""


def gradicon_loss(
    forward_map: PointMap, inverse_map: PointMap, points: torch.Tensor, delta: float | None = 1e-3
) -> torch.Tensor:
    """Gradient inverse consistency (GradICON, Tian et al. 2023) of a pair of maps at sampled points.

    ``mean_x ||J(x) - I||_F^2`` where ``J`` is the Jacobian of ``x -> forward_map(inverse_map(x))``
    at ``points`` (..., N, ndim), in the coordinates the maps work in (normalised [-1, 1] for the
    methods of this package). The maps must act pointwise (each output point depends on its input
    point only), as coordinate MLPs and interpolated fields do.

    ``delta``: forward-difference step in those coordinates (GradICON's ``delta = 1e-3``); the
    composition is evaluated at the points and at the points shifted by ``delta`` along each axis
    in one call per map. ``delta=None`` takes the exact Jacobian by automatic differentiation
    (``ndim`` extra backward passes, differentiable). Scale: GradICON's reference code averages the
    squared entries over the ``ndim`` components of each column instead of summing them, so its
    value is this one divided by ``ndim`` (its weight 1.5 corresponds to ``1.5 / ndim`` here).
    """
    if points.dim() < 2 or points.shape[-1] not in (2, 3):
        raise ValueError(
            f"gradicon_loss: points must have shape (..., N, ndim) with ndim 2 or 3, got {tuple(points.shape)}"
        )
    if delta is not None and delta <= 0:
        raise ValueError(f"gradicon_loss: delta must be > 0 or None, got {delta}")
    ndim = points.shape[-1]
    eye = torch.eye(ndim, dtype=points.dtype, device=points.device)
    if delta is None:
        jacobian = _jacobian_autograd(lambda p: forward_map(inverse_map(p)), points)
    else:
        n = points.shape[-2]
        shifted = torch.cat([points, *(points + delta * eye[d] for d in range(ndim))], dim=-2)
        mapped = forward_map(inverse_map(shifted))
        base = mapped[..., :n, :]
        # column d of J: (phi(x + delta e_d) - phi(x)) / delta, stacked as (..., N, ndim_out, ndim_in)
        jacobian = torch.stack(
            [(mapped[..., (d + 1) * n:(d + 2) * n, :] - base) / delta for d in range(ndim)], dim=-1
        )
    return (jacobian - eye).pow(2).sum(dim=(-2, -1)).mean()


def gradicon_symmetric_loss(
    forward_map: PointMap, inverse_map: PointMap, points: torch.Tensor, delta: float | None = 1e-3
) -> torch.Tensor:
    """GradICON on the scale of NePhi's and GradICON's released code: both compositions, entries averaged.

    ``(G(phi o psi) + G(psi o phi)) / (2 ndim^2)`` with ``G`` = :func:`gradicon_loss` (which sums the
    ``ndim^2`` squared entries of ``J - I``): the mean over points and over the ``ndim^2`` Jacobian
    entries of ``(J - I)^2``, averaged over the two directions. Points (..., N, ndim), normalised
    coordinates; the released weight is ``lambda = 10`` on this value.
    """
    ndim = points.shape[-1]
    both = gradicon_loss(forward_map, inverse_map, points, delta) + gradicon_loss(inverse_map, forward_map, points, delta)
    return both / (2 * ndim * ndim)


def _jacobian_autograd(point_map: PointMap, points: torch.Tensor) -> torch.Tensor:
    """Jacobian (..., N, ndim_out, ndim_in) of a pointwise map at ``points`` (..., N, ndim), differentiable."""
    inputs = points.detach().requires_grad_(True)
    with torch.enable_grad():
        mapped = point_map(inputs)
        rows = [
            torch.autograd.grad(mapped[..., r].sum(), inputs, create_graph=True)[0] for r in range(mapped.shape[-1])
        ]
    return torch.stack(rows, dim=-2)
