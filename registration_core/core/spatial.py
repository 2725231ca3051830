"""Coordinate grids, warping, composition and unit conversions; one code path for 2D and 3D.

Conventions
-----------
* Spatial axes are in array index order ``(i, j[, k])``; ``ndim`` is 2 or 3.
* ``disp_vox``: displacement in voxels of the fixed grid, shape ``(B, ndim, *spatial)`` for tensors
  or ``(ndim, *spatial)`` for arrays; channel ``d`` moves along array axis ``d``. The map
  ``x -> x + u(x)`` sends a fixed-grid point to the moving-image point sampled there.
* ``*_norm``: normalised coordinates in ``[-1, 1]`` with ``align_corners=True`` (index 0 -> -1,
  index ``n - 1`` -> +1), channels still in array order. ``torch.nn.functional.grid_sample``
  wants the last array axis first; only :func:`_to_grid_sample` deals with that.
* ``disp_mm``: physical displacement in millimetres, RAS+ components, via the image affine.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

InterpMode = Literal["linear", "nearest"]
PaddingMode = Literal["border", "zeros"]


def _norm_scale(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Factors ``2 / (n_d - 1)`` turning voxel offsets into normalised offsets, shape (1, ndim, 1...)."""
    ndim = len(shape)
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=like.dtype, device=like.device)
    return scale.view(1, ndim, *([1] * ndim))


def identity_grid_norm(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Identity grid in normalised coordinates, shape (1, ndim, *shape), channel d along array axis d."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def disp_vox_to_norm(disp_vox: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel displacement (B, ndim, *shape) -> normalised displacement (same shape)."""
    return disp_vox * _norm_scale(shape, disp_vox)


def disp_norm_to_vox(disp_norm: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Normalised displacement (B, ndim, *shape) -> voxel displacement (same shape)."""
    return disp_norm / _norm_scale(shape, disp_norm)


def _to_grid_sample(points_norm: torch.Tensor) -> torch.Tensor:
    """(B, ndim, *spatial) normalised points in array order -> (B, *spatial, ndim) in grid_sample order."""
    ndim = points_norm.shape[1]
    return points_norm.flip(1).permute(0, *range(2, ndim + 2), 1)


def sample(
    image: torch.Tensor,
    points_norm: torch.Tensor,
    mode: InterpMode = "linear",
    padding: PaddingMode = "border",
) -> torch.Tensor:
    """Sample ``image`` (B, C, *spatial) at normalised points (B, ndim, *out_spatial) -> (B, C, *out_spatial)."""
    torch_mode = "bilinear" if mode == "linear" else "nearest"
    return F.grid_sample(
        image, _to_grid_sample(points_norm), mode=torch_mode, padding_mode=padding, align_corners=True
    )


def warp(
    image: torch.Tensor,
    disp_vox: torch.Tensor,
    mode: InterpMode = "linear",
    padding: PaddingMode = "border",
) -> torch.Tensor:
    """Warp the moving ``image`` (B, C, *spatial) by ``disp_vox`` (B, ndim, *spatial): ``image o (id + u)``.

    The output lies on the fixed grid. ``mode="linear"`` is (bi/tri)linear interpolation, ``"nearest"``
    keeps label values. Points outside the image take the border value (or 0 with ``padding="zeros"``).
    """
    shape = disp_vox.shape[2:]
    grid = identity_grid_norm(shape, device=disp_vox.device, dtype=disp_vox.dtype)
    return sample(image, grid + disp_vox_to_norm(disp_vox, shape), mode=mode, padding=padding)


def warp_array(array: np.ndarray, disp_vox: np.ndarray, mode: InterpMode = "linear") -> np.ndarray:
    """NumPy front end of :func:`warp` for one image (*spatial) and ``disp_vox`` (ndim, *spatial).

    Integer label maps keep their dtype and need ``mode="nearest"``.
    """
    if array.shape != disp_vox.shape[1:]:
        raise ValueError(f"image shape {array.shape} and displacement shape {disp_vox.shape[1:]} differ")
    is_int = np.issubdtype(array.dtype, np.integer)
    if is_int and mode != "nearest":
        raise ValueError("integer label maps must be warped with mode='nearest'")
    # float64 keeps label values exact through nearest sampling
    dtype = torch.float64 if is_int else torch.float32
    image_t = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)[None, None]
    disp_t = torch.from_numpy(np.ascontiguousarray(disp_vox)).to(dtype)[None]
    out = warp(image_t, disp_t, mode=mode)[0, 0].numpy()
    return np.rint(out).astype(array.dtype) if is_int else out.astype(np.float32)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement (B, ndim, *spatial) of ``x -> outer(inner(x))`` where each map is ``x + u(x)`` in voxels.

    ``u(x) = u_inner(x) + u_outer(x + u_inner(x))``; ``u_outer`` is interpolated linearly
    (border values outside the grid).
    """
    return inner + warp(outer, inner, mode="linear")


class _ForwardDifference(torch.autograd.Function):
    """``out[x] = f[x + 1] - f[x]`` along one axis, ``0`` on the last slice; same shape as ``f``.

    Written as a Function because differentiating through slices allocates and zero-fills a
    full-size tensor per slice, which dominated the cost of NODEO's regularisers in 3D.
    """

    @staticmethod
    def forward(ctx: Any, field: torch.Tensor, axis: int) -> torch.Tensor:
        ctx.axis = axis
        n = field.shape[axis]
        out = torch.empty_like(field)
        torch.sub(field.narrow(axis, 1, n - 1), field.narrow(axis, 0, n - 1), out=out.narrow(axis, 0, n - 1))
        out.narrow(axis, n - 1, 1).zero_()
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return forward_difference_adjoint(grad, ctx.axis), None


def forward_difference_adjoint(grad: torch.Tensor, axis: int) -> torch.Tensor:
    """The gradient w.r.t. ``f`` of ``sum(grad * out)`` for ``out`` the forward difference of ``f``
    along ``axis`` (:func:`forward_differences`; ``grad`` on its last slice is ignored, that slice
    being the constant 0): ``-g[0]``, ``g[x - 1] - g[x]``, ``g[n - 2]``. Axis length >= 3."""
    n = grad.shape[axis]
    out = torch.empty_like(grad)
    torch.sub(grad.narrow(axis, 0, n - 2), grad.narrow(axis, 1, n - 2), out=out.narrow(axis, 1, n - 2))
    torch.neg(grad.narrow(axis, 0, 1), out=out.narrow(axis, 0, 1))
    out.narrow(axis, n - 1, 1).copy_(grad.narrow(axis, n - 2, 1))
    return out


def forward_differences(field: torch.Tensor) -> list[torch.Tensor]:
    """``f[x + 1] - f[x]`` of ``field`` (B, C, *spatial) along each spatial axis, each (B, C, *spatial).

    The last slice along the differenced axis is 0 (no forward neighbour); callers that need only
    valid values drop it.
    """
    return [_ForwardDifference.apply(field, axis) for axis in range(2, field.dim())]


def spatial_gradients(field: torch.Tensor, scheme: Literal["central", "forward"]) -> list[torch.Tensor]:
    """Finite differences of ``field`` (B, C, *spatial) along each spatial axis, in units per voxel.

    ``central``: ``np.gradient``-style (central inside, one-sided at the borders). ``forward``:
    :func:`forward_differences`. Every output has the input's shape.
    """
    if scheme == "forward":
        return forward_differences(field)
    grads = []
    for axis in range(2, field.dim()):
        n = field.shape[axis]
        interior = (field.narrow(axis, 2, n - 2) - field.narrow(axis, 0, n - 2)) / 2.0
        first = field.narrow(axis, 1, 1) - field.narrow(axis, 0, 1)
        last = field.narrow(axis, n - 1, 1) - field.narrow(axis, n - 2, 1)
        grads.append(torch.cat([first, interior, last], dim=axis))
    return grads


def jacobian_determinant(
    disp_vox: torch.Tensor, scheme: Literal["central", "forward"] = "central"
) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)`` for ``disp_vox`` (B, ndim, *spatial).

    Returns (B, *spatial) for ``central`` (the evaluation convention of Learn2Reg, ``np.gradient``)
    and (B, *(n - 1)) for ``forward`` (NODEO's folding penalty; cheaper, see :func:`spatial_gradients`).
    Values <= 0 mark folding. Entry ``J[r][c] = delta_rc + d u_r / d x_c`` (voxels per voxel).
    """
    ndim = disp_vox.shape[1]
    # grads[c] is (B, ndim, ...) holding d u_r / d x_c for every r; unbind is cheap to differentiate
    j = [list(g.unbind(dim=1)) for g in spatial_gradients(disp_vox, scheme)]
    jac = [[j[c][r] + (1.0 if r == c else 0.0) for c in range(ndim)] for r in range(ndim)]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (
            jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
        )
    if scheme == "forward":  # keep the voxels whose forward neighbours all exist
        det = det[(slice(None),) + tuple(slice(0, n - 1) for n in det.shape[1:])]
    return det


def disp_vox_to_mm(disp_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel displacement (ndim, *spatial) -> physical RAS displacement in mm (ndim, *spatial).

    For 3D this is ``A[:3, :3] @ u``; for 2D images (4x4 affine with a singleton third axis) the in-plane
    2x2 block of :func:`registration_core.core.io.spatial_affine` is used: rows (x, y) for an axial slice
    (e.g. made by :func:`registration_core.preprocessing.steps.extract_slice`), (x, z) coronal, (y, z) sagittal.
    """
    from registration_core.core.io import spatial_affine

    ndim = disp_vox.shape[0]
    lin = spatial_affine(affine, ndim)[:ndim, :ndim]
    return np.einsum("rc,c...->r...", lin, disp_vox).astype(np.float32)


def disp_mm_to_vox(disp_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`disp_vox_to_mm`: RAS mm displacement (ndim, *spatial) -> voxels (ndim, *spatial)."""
    from registration_core.core.io import spatial_affine

    ndim = disp_mm.shape[0]
    inv = np.linalg.inv(spatial_affine(affine, ndim)[:ndim, :ndim])
    return np.einsum("rc,c...->r...", inv, disp_mm).astype(np.float32)


def sample_displacement_at(disp_vox: np.ndarray, points_vox: np.ndarray) -> np.ndarray:
    """Linearly interpolate ``disp_vox`` (ndim, *spatial) at continuous voxel points (N, ndim) -> (N, ndim)."""
    ndim = disp_vox.shape[0]
    shape = disp_vox.shape[1:]
    disp_t = torch.from_numpy(np.ascontiguousarray(disp_vox, dtype=np.float64))[None]
    pts = torch.from_numpy(np.asarray(points_vox, dtype=np.float64))
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=torch.float64)
    pts_norm = (pts * scale - 1.0).T.reshape(1, ndim, len(pts), *([1] * (ndim - 1)))
    out = sample(disp_t, pts_norm, mode="linear", padding="border")
    return out.reshape(ndim, len(pts)).T.numpy()
