"""Automatic landmarks: distinctive points (vessel bifurcations, blob centres) inside a mask.

Conventions
-----------
* Arrays are in array index order ``(i, j[, k])``; ``ndim`` (2 or 3) comes from the image.
* Landmarks are returned as voxel coordinates ``(N, ndim)`` of the image's grid (voxel centres,
  integer values stored as float64), the format of :func:`registration_core.core.io.load_landmarks`.
* Lengths (``sigma_mm``, ``rho_mm``, ``min_distance_mm``, ``border_mm``) are in mm and become
  voxels per axis through the image's spacing.

The detector is the Foerstner interest operator on the structure tensor
``T = G_rho * (grad I grad I^T)`` of the image's Gaussian gradient at scale ``sigma_mm``: the
response ``det(T) / trace(T)`` is large where the intensity varies in every direction (corners,
bifurcations, blobs) and near zero along edges and in flat regions. Points are the strongest
responses inside the mask eroded by ``border_mm``, at least ``min_distance_mm`` apart (greedy
non-maximum suppression), with the budget split over the mask's labels in proportion to their
volume (lung masks: 1 right lung, 2 left lung), so every region gets its share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from registration_core.core.io import Image
from registration_core.errors import InputError


def _gaussian_gradient(data: np.ndarray, spacing_mm: Sequence[float], sigma_mm: float) -> list[np.ndarray]:
    """Gaussian derivative of ``data`` (*spatial) along each array axis, in intensity per mm."""
    sigma_vox = [sigma_mm / s for s in spacing_mm]
    gradients = []
    for axis, spacing in enumerate(spacing_mm):
        order = [0] * data.ndim
        order[axis] = 1
        gradients.append(ndimage.gaussian_filter(data, sigma_vox, order=order, mode="nearest") / spacing)
    return gradients


def _determinant(tensor: dict[tuple[int, int], np.ndarray], ndim: int) -> np.ndarray:
    """Determinant of the symmetric tensor field given by its upper entries ``tensor[(a, b)]``, a <= b."""
    t = {**tensor, **{(b, a): value for (a, b), value in tensor.items()}}
    if ndim == 2:
        return t[0, 0] * t[1, 1] - t[0, 1] ** 2
    return (
        t[0, 0] * (t[1, 1] * t[2, 2] - t[1, 2] ** 2)
        - t[0, 1] * (t[0, 1] * t[2, 2] - t[1, 2] * t[0, 2])
        + t[0, 2] * (t[0, 1] * t[1, 2] - t[1, 1] * t[0, 2])
    )


def foerstner_response(
    data: np.ndarray, spacing_mm: Sequence[float], sigma_mm: float = 1.0, rho_mm: float = 2.0
) -> np.ndarray:
    """Foerstner interest measure ``det(T) / trace(T)`` of the structure tensor, shape (*spatial).

    Args:
        data: 2D or 3D image (*spatial), any intensity unit.
        spacing_mm: voxel size per array axis (mm).
        sigma_mm: scale of the Gaussian gradient (mm).
        rho_mm: scale of the Gaussian integration window of the tensor (mm).

    Returns:
        float64 response (*spatial), >= 0 up to rounding; 0 where the image is flat.
    """
    data = np.asarray(data, dtype=np.float64)
    ndim = data.ndim
    gradients = _gaussian_gradient(data, spacing_mm, sigma_mm)
    rho_vox = [rho_mm / s for s in spacing_mm]
    tensor = {
        (a, b): ndimage.gaussian_filter(gradients[a] * gradients[b], rho_vox, mode="nearest")
        for a in range(ndim)
        for b in range(a, ndim)
    }
    trace = sum(tensor[a, a] for a in range(ndim))
    determinant = _determinant(tensor, ndim)
    return np.divide(determinant, trace, out=np.zeros_like(trace), where=trace > 0)


def _quotas(counts: Sequence[int], n: int) -> list[int]:
    """Split ``n`` points over regions in proportion to ``counts`` (largest remainder method)."""
    total = float(sum(counts))
    exact = [n * c / total for c in counts]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(counts)), key=lambda r: exact[r] - quotas[r], reverse=True)
    for region in by_remainder[: n - sum(quotas)]:
        quotas[region] += 1
    return quotas


class _Suppressor:
    """Greedy non-maximum suppression: a point is kept when no kept point lies within ``radius_mm``."""

    def __init__(self, shape: Sequence[int], spacing_mm: Sequence[float], radius_mm: float) -> None:
        self.blocked = np.zeros(tuple(shape), dtype=bool)
        reach = [math.floor(radius_mm / s) for s in spacing_mm]
        offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1)
        offsets = offsets.reshape(-1, len(reach))
        inside = np.linalg.norm(offsets * np.asarray(spacing_mm), axis=1) < radius_mm
        self.offsets = offsets[inside]
        self.upper = np.asarray(shape) - 1

    def take(self, candidates: np.ndarray, limit: int) -> list[np.ndarray]:
        """Keep up to ``limit`` of ``candidates`` (K, ndim) int voxels, strongest first, blocking their balls."""
        kept: list[np.ndarray] = []
        for point in candidates:
            if len(kept) == limit:
                break
            if self.blocked[tuple(point)]:
                continue
            kept.append(point)
            ball = np.clip(point + self.offsets, 0, self.upper)
            self.blocked[tuple(ball.T)] = True
        return kept


def _region_labels(mask: Image | None, image: Image) -> np.ndarray:
    """Integer region map (*spatial) from a mask (its labels) or the whole image (one region)."""
    if mask is None:
        return np.ones(image.shape, dtype=np.int64)
    if not mask.same_grid(image, atol=1e-3):
        raise InputError(f"detect_landmarks: mask {mask.path or ''} is not on the grid of {image.path or 'the image'}")
    data = np.asarray(mask.data)
    if not np.issubdtype(data.dtype, np.integer) and not np.all(data == np.round(data)):
        raise InputError(f"detect_landmarks: mask {mask.path or ''} must hold integer labels (0 = outside)")
    return data.astype(np.int64)


def detect_landmarks(
    image: Image,
    mask: Image | None,
    n: int,
    min_distance_mm: float,
    sigma_mm: float = 1.0,
    rho_mm: float = 2.0,
    border_mm: float = 4.0,
) -> np.ndarray:
    """Up to ``n`` distinctive points inside ``mask``, at least ``min_distance_mm`` apart.

    Args:
        image: 2D or 3D image (e.g. a CT clipped and normalised); the fixed image of a pair.
        mask: label map on the image's grid, nonzero inside (each label a region: lungs 1, 2),
            or None for the whole image.
        n: number of points wanted (>= 1). Each region gets ``n * volume / total volume`` (largest
            remainder rounding); what a region cannot fill goes to the others.
        min_distance_mm: smallest distance between two points (mm, > 0).
        sigma_mm, rho_mm: gradient and integration scales of :func:`foerstner_response` (mm).
        border_mm: points lie more than this distance (mm) inside the mask (or the image border).

    Returns:
        (N, ndim) float64 voxel coordinates (voxel centres), N <= n, ordered region by region and by
        decreasing response; fewer than ``n`` only when the eroded mask holds no more candidates.

    Raises:
        InputError: bad ``n`` / lengths, a mask on another grid or with non-integer values, or a
            mask with no voxel deeper than ``border_mm``.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise InputError(f"detect_landmarks: n={n} is not allowed; expected an integer >= 1")
    for name, value in (("min_distance_mm", min_distance_mm), ("sigma_mm", sigma_mm), ("rho_mm", rho_mm)):
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"detect_landmarks: {name}={value} is not allowed; expected a number > 0 (mm)")
    if not math.isfinite(border_mm) or border_mm < 0:
        raise InputError(f"detect_landmarks: border_mm={border_mm} is not allowed; expected a number >= 0 (mm)")
    regions = _region_labels(mask, image)
    spacing = image.spacing
    padded = np.pad(regions > 0, 1)  # the image border counts as outside
    depth = ndimage.distance_transform_edt(padded, sampling=spacing)[(slice(1, -1),) * image.ndim]
    regions = np.where(depth > border_mm, regions, 0)
    labels = [int(label) for label in np.unique(regions) if label != 0]
    if not labels:
        raise InputError(f"detect_landmarks: the mask holds no voxel more than border_mm={border_mm} mm inside")

    response = foerstner_response(image.data, spacing, sigma_mm, rho_mm)
    candidates = np.argwhere(regions > 0)
    order = np.argsort(-response[tuple(candidates.T)], kind="stable")
    candidates = candidates[order]
    candidate_regions = regions[tuple(candidates.T)]

    suppressor = _Suppressor(image.shape, spacing, min_distance_mm)
    counts = [int(np.sum(regions == label)) for label in labels]
    kept: list[np.ndarray] = []
    for label, quota in zip(labels, _quotas(counts, int(n)), strict=True):
        kept += suppressor.take(candidates[candidate_regions == label], quota)
    kept += suppressor.take(candidates, int(n) - len(kept))
    return np.asarray(kept, dtype=np.float64).reshape(-1, image.ndim)
