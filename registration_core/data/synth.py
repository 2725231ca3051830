"""Synthetic smooth deformations and intensity changes (after RegNet's synthetic fields).

Conventions
-----------
* Arrays are in array index order ``(i, j[, k])``; ``ndim`` (2 or 3) comes from ``shape``.
* ``spacing_mm``: voxel size in mm along each array axis.
* ``disp_vox``: displacement of shape ``(ndim, *shape)`` in voxels of the grid, channel ``d``
  along array axis ``d``; the map is ``x -> x + u(x)`` (see :mod:`registration_core.core.spatial`).
  A deformed copy of an image ``I`` is ``I o (id + u)``, i.e. ``spatial.warp_array(I, u)``.
* Magnitudes in mm are ``|u|_mm = sqrt(sum_d (u_d * spacing_d)^2)``: vector components are drawn
  in mm, so a field is isotropic in physical space whatever the voxel size.

The single-frequency field of :func:`random_smooth_displacement` is built from parts that a
mixed-frequency or respiratory generator can reuse: :func:`random_bspline_field` (random
coefficients on a coarse control grid, cubic-spline upsampled), :func:`smooth_field`
(Gaussian, border values kept), and :func:`scale_to_max_displacement` (rescale to a maximum
magnitude, optionally as a stationary velocity integrated by scaling and squaring).
:func:`mixed_frequency_displacement` blends several of them (coarse everywhere, finer ones in
random or edge-seeded regions); :func:`respiratory_displacement` models breathing on a CT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from registration_core.core import spatial
from registration_core.core.io import Image
from registration_core.errors import InputError

# Scaling and squaring starts from ``v / 2**n`` with its largest step at most this many voxels.
_MAX_INITIAL_STEP_VOX = 0.25
# Fixed-point iterations that rescale the velocity until the integrated field hits the target maximum.
_RESCALE_ITERATIONS = 4
_RESCALE_RTOL = 1e-3
# Mixed-frequency regions from an image: edge voxels are the top 10 % of the gradient magnitude,
# half of them (at random) seed the dilated regions.
_EDGE_QUANTILE = 0.9
_EDGE_KEEP = 0.5


def _check_geometry(shape: Sequence[int], spacing_mm: Sequence[float]) -> tuple[tuple[int, ...], np.ndarray]:
    """Validate a 2D/3D grid: ``shape`` (ndim ints >= 3) and ``spacing_mm`` (ndim positive floats)."""
    shape_t = tuple(int(n) for n in shape)
    if len(shape_t) not in (2, 3) or any(n < 3 for n in shape_t):
        raise InputError(f"shape {tuple(shape)} is not allowed; expected 2 or 3 axes of at least 3 voxels")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (len(shape_t),) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"spacing_mm {tuple(spacing_mm)} is not allowed; expected {len(shape_t)} positive values")
    return shape_t, spacing


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """Return ``value`` as float or raise InputError naming the parameter."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name}={value} is not allowed; expected a finite number {allowed}")
    return value


def _check_rng(rng: np.random.Generator) -> None:
    """Require a numpy Generator (``numpy.random.default_rng(seed)``)."""
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def magnitude_mm(disp_vox: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Physical length in mm of each displacement vector: (ndim, *spatial) voxels -> (*spatial) mm."""
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1, *([1] * (disp_vox.ndim - 1)))
    return np.sqrt(np.sum((disp_vox * spacing) ** 2, axis=0))


def min_jacobian_determinant(disp_vox: np.ndarray) -> float:
    """Smallest det of the Jacobian of ``x -> x + u(x)`` (central differences) for (ndim, *spatial) voxels."""
    disp_t = torch.from_numpy(np.ascontiguousarray(disp_vox, dtype=np.float64))[None]
    return float(spatial.jacobian_determinant(disp_t, scheme="central").min())


def control_grid_shape(shape: Sequence[int], spacing_mm: Sequence[float], grid_spacing_mm: float) -> tuple[int, ...]:
    """Control points per axis so that neighbours are at most ``grid_spacing_mm`` apart (>= 3 per axis).

    The first and last control points sit on the first and last voxel centres of the image.
    """
    extent_mm = (np.asarray(shape) - 1) * np.asarray(spacing_mm, dtype=np.float64)
    return tuple(max(3, math.ceil(e / grid_spacing_mm - 1e-9) + 1) for e in extent_mm)


def spline_upsampling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1D cubic-spline interpolation from ``n_in`` to ``n_out`` samples.

    Sample 0 and ``n_in - 1`` map to output 0 and ``n_out - 1`` (corners aligned, as
    ``scipy.ndimage.zoom(..., order=3, grid_mode=False)``). Applying it along each axis gives the
    tensor-product spline, far faster than an nD zoom for a coarse control grid.
    """
    matrix = ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=3, mode="mirror", grid_mode=False)
    if matrix.shape != (n_out, n_in):  # zoom rounds the output length; guard against an off-by-one
        raise RuntimeError(f"spline upsampling matrix has shape {matrix.shape}, expected {(n_out, n_in)}")
    return matrix


def random_bspline_field(
    shape: Sequence[int],
    control_shape: Sequence[int],
    rng: np.random.Generator,
    channels: int,
    zero_border: bool = True,
) -> np.ndarray:
    """Random smooth field: U(-1, 1) values on a coarse control grid, cubic-spline upsampled to ``shape``.

    Args:
        shape: output grid ``(*spatial)``, 2 or 3 axes.
        control_shape: control points per axis (>= 3 each); control point 0 and ``m - 1`` lie on the
            first and last voxel centres.
        rng: random generator (draws ``channels * prod(control_shape)`` uniforms).
        channels: number of output channels.
        zero_border: set the outermost control points to 0, so the field is 0 (to rounding) on the
            image border: the interpolating spline passes through the control values.

    Returns:
        float64 array (channels, *shape); values are unitless (the caller scales them).
    """
    coeffs = rng.uniform(-1.0, 1.0, size=(channels, *control_shape))
    if zero_border:
        interior = np.zeros(coeffs.shape, dtype=bool)
        interior[(slice(None), *(slice(1, m - 1) for m in control_shape))] = True
        coeffs[~interior] = 0.0
    field = coeffs
    for axis, (n, m) in enumerate(zip(shape, control_shape), start=1):
        field = np.moveaxis(np.tensordot(spline_upsampling_matrix(m, n), field, axes=(1, axis)), 0, axis)
    return field


def smooth_field(field: np.ndarray, spacing_mm: Sequence[float], sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing of every channel of ``field`` (C, *spatial), ``sigma_mm`` in mm.

    Each axis is padded by odd reflection about the border voxel (``2 * f[0] - f[k]``), so the
    1D pass along an axis keeps the values at both ends of that axis: a field that is zero on the
    image border stays exactly zero there, and a linear field is left unchanged (no bending at the
    edges). ``sigma_mm == 0`` returns a copy.
    """
    out = np.array(field, dtype=np.float64)
    if sigma_mm == 0:
        return out
    for axis, spacing in enumerate(spacing_mm, start=1):
        sigma_vox = sigma_mm / spacing
        radius = math.ceil(4.0 * sigma_vox)
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect", reflect_type="odd")
        smoothed = ndimage.gaussian_filter1d(padded, sigma_vox, axis=axis, mode="mirror", truncate=4.0)
        out = smoothed.take(range(radius, radius + out.shape[axis]), axis=axis)
    return out


def integrate_velocity(velocity_vox: np.ndarray) -> np.ndarray:
    """Exponential of a stationary velocity (ndim, *spatial) in voxels by scaling and squaring.

    ``u_0 = v / 2**n`` with ``n`` chosen so that ``max |u_0| <= 0.25`` voxel, then ``n`` times
    ``u <- u + u o (id + u)`` (:func:`registration_core.core.spatial.compose`, linear interpolation).
    Points where ``v = 0`` stay fixed, so a zero border stays zero. Returns float64 voxels.
    """
    max_vox = float(np.sqrt(np.sum(velocity_vox**2, axis=0)).max())
    steps = max(0, math.ceil(math.log2(max_vox / _MAX_INITIAL_STEP_VOX))) if max_vox > 0 else 0
    disp = torch.from_numpy(np.ascontiguousarray(velocity_vox, dtype=np.float64))[None] / 2.0**steps
    for _ in range(steps):
        disp = spatial.compose(disp, disp)
    return disp[0].numpy()


def scale_to_max_displacement(
    field_vox: np.ndarray,
    spacing_mm: Sequence[float],
    max_disp_mm: float,
    diffeomorphic: bool = True,
) -> np.ndarray:
    """Rescale a smooth field (ndim, *spatial) in voxels so its largest magnitude is ``max_disp_mm``.

    ``diffeomorphic=False``: ``u = c * field`` (may fold when the field is steep).
    ``diffeomorphic=True``: the field is a stationary velocity ``c * field`` integrated by
    :func:`integrate_velocity`; ``c`` is refined by fixed-point iterations until the integrated
    field's maximum is within 0.1 % of ``max_disp_mm``, then the displacement is multiplied by the
    last (near-one) ratio so the maximum is exact. ``det J > 0`` is then checked on central
    differences.

    Returns:
        float32 displacement (ndim, *spatial) in voxels with ``max |u|_mm == max_disp_mm``.

    Raises:
        InputError: the field is zero everywhere, or the requested maximum folds the grid.
    """
    peak = float(magnitude_mm(field_vox, spacing_mm).max())
    if peak == 0:
        raise InputError("the random field is zero everywhere; use a larger image or a smaller grid_spacing_mm")
    disp = field_vox * (max_disp_mm / peak)
    if diffeomorphic:
        velocity = disp
        for _ in range(_RESCALE_ITERATIONS):
            disp = integrate_velocity(velocity)
            ratio = max_disp_mm / float(magnitude_mm(disp, spacing_mm).max())
            if abs(ratio - 1.0) < _RESCALE_RTOL:
                break
            velocity = velocity * ratio
        disp = disp * ratio
        min_det = min_jacobian_determinant(disp)
        if min_det <= 0:
            raise InputError(
                f"max_disp_mm={max_disp_mm} folds the grid (min det J = {min_det:.3f}); "
                "use a smaller max_disp_mm or a larger grid_spacing_mm / smooth_sigma_mm"
            )
    return disp.astype(np.float32)


def random_smooth_displacement(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    rng: np.random.Generator,
    grid_spacing_mm: float = 40.0,
    max_disp_mm: float = 8.0,
    smooth_sigma_mm: float = 5.0,
    diffeomorphic: bool = True,
) -> np.ndarray:
    """RegNet-style single-frequency random deformation on a 2D or 3D grid.

    Vector components (mm) are drawn U(-1, 1) on a control grid of spacing at most
    ``grid_spacing_mm`` whose outermost points are 0, upsampled to the image by cubic-spline
    interpolation, Gaussian-smoothed with ``smooth_sigma_mm`` (border kept at 0) and rescaled so
    the largest displacement is ``max_disp_mm`` (:func:`scale_to_max_displacement`; with
    ``diffeomorphic=True`` the field is integrated as a stationary velocity and ``det J > 0``
    is verified).

    Args:
        shape: grid ``(*spatial)``, 2 or 3 axes of at least 3 voxels.
        spacing_mm: voxel size per array axis (mm).
        rng: ``numpy.random.Generator``; the same generator state gives the same field.
        grid_spacing_mm: control point spacing (mm), > 0; larger means smoother.
        max_disp_mm: largest displacement magnitude (mm), > 0.
        smooth_sigma_mm: Gaussian sigma (mm), >= 0.
        diffeomorphic: integrate as a velocity field and verify ``det J > 0``.

    Returns:
        float32 ``disp_vox`` (ndim, *shape) in voxels; exactly 0 on the image border (to rounding).
    """
    shape_t, spacing = _check_geometry(shape, spacing_mm)
    _check_rng(rng)
    grid_spacing_mm = _check_positive("grid_spacing_mm", grid_spacing_mm)
    max_disp_mm = _check_positive("max_disp_mm", max_disp_mm)
    smooth_sigma_mm = _check_positive("smooth_sigma_mm", smooth_sigma_mm, allow_zero=True)
    control = control_grid_shape(shape_t, spacing, grid_spacing_mm)
    field_mm = random_bspline_field(shape_t, control, rng, channels=len(shape_t), zero_border=True)
    field_mm = smooth_field(field_mm, spacing, smooth_sigma_mm)
    field_vox = field_mm / spacing.reshape(-1, *([1] * len(shape_t)))
    return scale_to_max_displacement(field_vox, spacing, max_disp_mm, diffeomorphic=diffeomorphic)


def _structure_regions(structure: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """RegNet's mixed-frequency regions: random dilations of the strong edges of ``structure`` (*spatial).

    Edges are the voxels whose Gaussian gradient magnitude (sigma 1 voxel) is in the top
    ``_EDGE_QUANTILE``; each is kept with probability ``_EDGE_KEEP``; the rest is dilated with a
    random structuring element (connectivity 1 to ndim) until at least ``fraction`` of the grid is
    covered. Returns a boolean array (*spatial).
    """
    gradient = ndimage.gaussian_gradient_magnitude(np.asarray(structure, dtype=np.float64), sigma=1.0)
    edges = gradient >= np.quantile(gradient, _EDGE_QUANTILE)
    region = edges & (rng.uniform(size=edges.shape) < _EDGE_KEEP)
    element = ndimage.generate_binary_structure(structure.ndim, int(rng.integers(1, structure.ndim + 1)))
    while region.mean() < fraction:
        grown = ndimage.binary_dilation(region, structure=element)
        if np.array_equal(grown, region):  # nothing left to grow into (no edge voxel was kept)
            break
        region = grown
    return region


def _random_regions(
    shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator, fraction: float, scale_mm: float
) -> np.ndarray:
    """Random blobs covering ``fraction`` of the grid: a smooth random scalar field (control spacing
    ``scale_mm``) above its ``1 - fraction`` quantile. Returns a boolean array (*spatial)."""
    field = random_bspline_field(shape, control_grid_shape(shape, spacing, scale_mm), rng, channels=1, zero_border=False)[0]
    return field >= np.quantile(field, 1.0 - fraction)


def _check_structure(structure: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``structure`` as a finite, non-constant float array of ``shape`` (or None); InputError otherwise."""
    if structure is None:
        return None
    data = np.asarray(structure, dtype=np.float64)
    if data.shape != shape or not np.all(np.isfinite(data)) or float(np.ptp(data)) == 0:
        raise InputError(
            f"structure of shape {data.shape} is not allowed; expected a finite, non-constant array of shape {shape}"
        )
    return data


def mixed_frequency_displacement(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    rng: np.random.Generator,
    grid_spacings_mm: Sequence[float] = (80.0, 40.0, 20.0),
    max_disp_mm: float = 8.0,
    region_fraction: float = 0.3,
    structure: np.ndarray | None = None,
    smooth_sigma_mm: float = 2.0,
    zero_border: bool = True,
    diffeomorphic: bool = True,
) -> np.ndarray:
    """RegNet-style mixed-frequency random deformation: single-frequency fields blended by regions.

    Level ``k`` is a random B-spline field ``f_k`` (vector components in mm, U(-1, 1) control
    values on a grid of spacing ``grid_spacings_mm[k]``, see :func:`random_bspline_field`)
    normalised to a largest magnitude of 1. The coarsest level covers the whole grid; every finer
    level ``k`` is confined to random regions ``R_k`` covering about ``region_fraction`` of the
    grid, blended by a Gaussian-smoothed indicator ``w_k = G_{s_k / 4} * 1[R_k]`` in [0, 1]:

        ``u = f_0 + sum_{k >= 1} w_k f_k``,

    then smoothed with ``smooth_sigma_mm`` (:func:`smooth_field`, border values kept) and rescaled
    to ``max |u|_mm == max_disp_mm`` (:func:`scale_to_max_displacement`). With ``structure`` (an
    image on the grid) the regions are RegNet's: random dilations of a random subset of the image's
    strongest edges, so the fine motion sits where the image shows it; without it they are random
    smooth blobs. With a single grid spacing this is :func:`random_smooth_displacement`.

    Args:
        shape: grid ``(*spatial)``, 2 or 3 axes of at least 3 voxels.
        spacing_mm: voxel size per array axis (mm).
        rng: ``numpy.random.Generator``; the same generator state gives the same field.
        grid_spacings_mm: control point spacings (mm) of the levels, > 0 each; sorted coarse to fine here.
        max_disp_mm: largest displacement magnitude (mm), > 0.
        region_fraction: part of the grid, in (0, 1], a finer level covers (before blending).
        structure: optional image (*shape) whose edges seed the regions.
        smooth_sigma_mm: final Gaussian sigma (mm), >= 0.
        zero_border: the field is 0 on the image border (to rounding).
        diffeomorphic: integrate as a stationary velocity and verify ``det J > 0``.

    Returns:
        float32 ``disp_vox`` (ndim, *shape) in voxels.

    Raises:
        InputError: bad geometry or parameters, or a field that folds (lower ``max_disp_mm`` or
            use coarser grid spacings).
    """
    shape_t, spacing = _check_geometry(shape, spacing_mm)
    _check_rng(rng)
    levels = sorted((_check_positive("grid_spacings_mm", s) for s in grid_spacings_mm), reverse=True)
    if not levels:
        raise InputError("grid_spacings_mm is empty; expected at least one control point spacing (mm)")
    max_disp_mm = _check_positive("max_disp_mm", max_disp_mm)
    region_fraction = _check_positive("region_fraction", region_fraction)
    if region_fraction > 1:
        raise InputError(f"region_fraction={region_fraction} is not allowed; expected a number in (0, 1]")
    smooth_sigma_mm = _check_positive("smooth_sigma_mm", smooth_sigma_mm, allow_zero=True)
    structure_data = _check_structure(structure, shape_t)

    field_mm = np.zeros((len(shape_t), *shape_t))
    for k, level_mm in enumerate(levels):
        control = control_grid_shape(shape_t, spacing, level_mm)
        level = random_bspline_field(shape_t, control, rng, channels=len(shape_t), zero_border=zero_border)
        level /= max(float(np.sqrt(np.sum(level**2, axis=0)).max()), np.finfo(float).tiny)
        if k > 0:
            regions = (
                _random_regions(shape_t, spacing, rng, region_fraction, level_mm)
                if structure_data is None else _structure_regions(structure_data, rng, region_fraction)
            )
            weight = ndimage.gaussian_filter(regions.astype(np.float64), sigma=level_mm / 4.0 / spacing, mode="nearest")
            level *= weight
        field_mm += level
    field_mm = smooth_field(field_mm, spacing, smooth_sigma_mm)
    field_vox = field_mm / spacing.reshape(-1, *([1] * len(shape_t)))
    return scale_to_max_displacement(field_vox, spacing, max_disp_mm, diffeomorphic=diffeomorphic)


def respiratory_displacement(
    reference: Image,
    rng: np.random.Generator,
    lung_mask: np.ndarray | None = None,
    shift_mm: float = 30.0,
    contraction: float = 0.12,
    local_max_disp_mm: float = 3.0,
) -> np.ndarray:
    """RegNet-style respiratory motion on a 3D CT grid: inhale (fixed) -> exhale (moving).

    With ``z`` the superior (RAS S) coordinate, ``z_d`` the inferior end of the lungs (the
    diaphragm) and ``z_a`` their apex, the weight ``w = clip((z_a - z) / (z_a - z_d), 0, 1)`` is 1 at
    and below the diaphragm and falls linearly to 0 at the apex. As the map ``x -> x + u(x)``:

    * cranio-caudal: ``u_S = w * shift_mm * U(0.8, 1.1)`` (the diaphragm rises towards the apex);
    * transversal: ``u_RA = -w * contraction * U(0.8, 1.1) * (x_RA - c_RA)`` (the chest narrows
      towards the lungs' centre ``c``);
    * plus a single-frequency field (:func:`random_smooth_displacement`, 40 mm grid) of maximum
      ``local_max_disp_mm`` (0: none).

    Args:
        reference: the CT (its grid and affine; the S axis is found from the affine).
        rng: ``numpy.random.Generator``.
        lung_mask: (*shape) nonzero inside the lungs; None uses the whole image extent.
        shift_mm, contraction, local_max_disp_mm: nominal amplitudes (mm, fraction, mm).

    Returns:
        float32 ``disp_vox`` (3, *shape) in voxels of the reference grid.

    Raises:
        InputError: not 3D, an empty or mis-shaped mask, bad amplitudes, or a field that folds.
    """
    if reference.ndim != 3:
        raise InputError(f"respiratory_displacement needs a 3D image, got {reference.ndim}D")
    _check_rng(rng)
    shift_mm = _check_positive("shift_mm", shift_mm, allow_zero=True)
    contraction = _check_positive("contraction", contraction, allow_zero=True)
    local_max_disp_mm = _check_positive("local_max_disp_mm", local_max_disp_mm, allow_zero=True)
    mask = np.ones(reference.shape, bool) if lung_mask is None else np.asarray(lung_mask) > 0
    if mask.shape != reference.shape or not mask.any():
        raise InputError(f"lung_mask must be a non-empty array of shape {reference.shape}, got {mask.shape}")
    affine = np.asarray(reference.affine, dtype=np.float64)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in reference.shape], indexing="ij"))
    ras = np.einsum("rc,c...->r...", affine[:3, :3], ijk) + affine[:3, 3].reshape(3, 1, 1, 1)
    z_inside = ras[2][mask]
    z_d, z_a = float(z_inside.min()), float(z_inside.max())
    weight = np.clip((z_a - ras[2]) / max(z_a - z_d, 1e-6), 0.0, 1.0)
    shift = shift_mm * rng.uniform(0.8, 1.1)
    scale = contraction * rng.uniform(0.8, 1.1)
    centre = [float(ras[d][mask].mean()) for d in range(2)]
    disp_ras = np.stack([-weight * scale * (ras[0] - centre[0]), -weight * scale * (ras[1] - centre[1]), weight * shift])
    disp = spatial.disp_mm_to_vox(disp_ras, affine).astype(np.float64)
    if local_max_disp_mm > 0:
        disp += random_smooth_displacement(reference.shape, reference.spacing, rng, max_disp_mm=local_max_disp_mm)
    min_det = min_jacobian_determinant(disp)
    if min_det <= 0:
        raise InputError(f"the respiratory field folds the grid (min det J = {min_det:.3f}); lower shift_mm or contraction")
    return disp.astype(np.float32)


def random_intensity_transform(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma_range: tuple[float, float] = (0.8, 1.25),
    bias_field_strength: float = 0.1,
    noise_std: float = 0.01,
    bias_control_points: int = 4,
) -> np.ndarray:
    """Random gamma, smooth multiplicative bias field and Gaussian noise on an image (*spatial).

    With ``lo, hi`` the input's min and max and ``x = (image - lo) / (hi - lo)`` in [0, 1]:
    ``y = x**gamma * exp(bias_field_strength * b) + N(0, noise_std)`` where ``gamma`` is drawn
    log-uniformly from ``gamma_range`` and ``b`` is a smooth field in [-1, 1] (largest magnitude 1)
    from :func:`random_bspline_field` on ``bias_control_points`` points per axis. ``noise_std``
    is a fraction of the input range. The output ``lo + y * (hi - lo)`` is clipped to ``[lo, hi]``.

    Returns:
        float32 array with the shape of ``image``.
    """
    _check_rng(rng)
    data = np.asarray(image, dtype=np.float64)
    if data.ndim not in (2, 3) or not np.all(np.isfinite(data)):
        raise InputError(f"image of shape {data.shape} is not allowed; expected a finite 2D or 3D array")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"image is constant ({lo}); an intensity transform needs a range")
    g_lo, g_hi = (float(g) for g in gamma_range)
    if not 0 < g_lo <= g_hi:
        raise InputError(f"gamma_range {tuple(gamma_range)} is not allowed; expected 0 < low <= high")
    bias_field_strength = _check_positive("bias_field_strength", bias_field_strength, allow_zero=True)
    noise_std = _check_positive("noise_std", noise_std, allow_zero=True)
    if int(bias_control_points) < 3:
        raise InputError(f"bias_control_points={bias_control_points} is not allowed; expected >= 3")

    gamma = math.exp(rng.uniform(math.log(g_lo), math.log(g_hi)))
    control = (int(bias_control_points),) * data.ndim
    bias = random_bspline_field(data.shape, control, rng, channels=1, zero_border=False)[0]
    bias /= max(float(np.abs(bias).max()), np.finfo(float).tiny)
    x = (data - lo) / (hi - lo)
    y = x**gamma * np.exp(bias_field_strength * bias) + rng.normal(0.0, noise_std, size=data.shape)
    return np.clip(lo + y * (hi - lo), lo, hi).astype(np.float32)
