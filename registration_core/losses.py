"""Similarity and regularisation losses on (B, C, *spatial) tensors, 2D or 3D, float32.

Images are compared on the fixed grid; displacements are ``disp_vox`` (B, ndim, *spatial) in voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .filters import box_sum
from .spatial import forward_differences, jacobian_determinant


class LocalNCC:
    """Windowed (local) normalised cross-correlation against a fixed image.

    ``loss(warped) = 1 - mean(cc)`` with ``cc = cross^2 / (var_f * var_w + eps)`` over a cubic
    window of ``window`` voxels per side (zero padded at the borders), the squared local NCC of
    VoxelMorph and NODEO. The window sums of the fixed image are computed once; each call costs
    three running-sum box filters whatever the window size.
    """

    def __init__(self, fixed: torch.Tensor, window: int, eps: float = 1e-5) -> None:
        if window < 1 or window % 2 == 0:
            raise ValueError(f"ncc window must be a positive odd integer, got {window}")
        self.window = window
        self.eps = eps
        self.n = float(window ** (fixed.dim() - 2))
        self.fixed = fixed
        sums = box_sum(torch.cat([fixed, fixed * fixed], dim=1), window)
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
        return 1.0 - self.cc_map(warped).mean()


def ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int) -> torch.Tensor:
    """``1 - mean(local NCC^2)`` of two (B, C, *spatial) images over a ``window``-voxel cube."""
    return LocalNCC(fixed, window)(warped)


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


def neg_jacobian_loss(disp_vox: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``mean(relu(threshold - detJ)^2)`` of the map ``x + u(x)``, forward differences (NODEO's L_J)."""
    det = jacobian_determinant(disp_vox, scheme="forward")
    return F.relu(threshold - det).pow(2).mean()


def velocity_magnitude_loss(velocities: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Mean over positions (and time) of the squared velocity magnitude ``|v|^2``.

    ``velocities``: (B, ndim, *spatial) with ``channel_dim=1``, or a stack over time (T, B, ndim, *spatial)
    with ``channel_dim=2``. Units are those of the velocities (NODEO: normalised coordinates per unit time).
    """
    return velocities.pow(2).sum(dim=channel_dim).mean()
