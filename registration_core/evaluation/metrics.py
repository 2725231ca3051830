"""Registration quality metrics: Dice, HD95, Jacobian statistics, TRE (landmarks, known fields), similarity.

Conventions (shared with the rest of ``registration_core``):

* Arrays are in array index order ``(i, j[, k])`` as stored in NIfTI; ``ndim`` is 2 or 3 and
  both go through one code path.
* Label maps are integer arrays of shape ``(*spatial)``; label 0 is background.
* ``disp_vox`` has shape ``(ndim, *spatial)``: channel ``d`` is the displacement along array
  axis ``d`` in voxels of the fixed (atlas) grid. The map ``x -> x + u(x)`` sends a fixed-image
  point to the corresponding point of the moving image.
* ``spacing_mm`` is a sequence of ``ndim`` voxel sizes in millimetres, in array axis order.

Inputs are numpy arrays; outputs are plain Python floats, ints, lists and dicts (and a numpy
vector for per-landmark errors). Undefined values are ``float('nan')``; the caller decides how
to serialise them (``registration_core.evaluation.evaluate`` writes JSON ``null``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from scipy import ndimage

from registration_core.core.spatial import jacobian_determinant, sample_displacement_at
from registration_core.errors import InputError
from registration_core.evaluation.surface import hd95_surfel

HD95_PERCENTILE = 95.0
HD95_CONVENTIONS = ("voxel", "surfel")


class DiceSummary(TypedDict):
    """Result of :func:`dice_summary`."""

    per_label: dict[int, float]
    mean: float
    skipped: list[int]


class HD95Summary(TypedDict):
    """Result of :func:`hd95_summary`: ``undefined`` maps a label to why its HD95 is NaN."""

    per_label: dict[int, float]
    mean: float
    skipped: list[int]
    undefined: dict[int, str]


class JacobianStats(TypedDict):
    """Result of :func:`jacobian_stats` (all over the voxels of the mask)."""

    neg_jac_ratio: float
    neg_jac_sum: float
    sdlogj: float
    detj_min: float
    detj_max: float
    n_voxels: int


# --------------------------------------------------------------------------- validation


def _label_array(name: str, labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as an integer array; raise InputError if it holds non-integer values."""
    array = np.asarray(labels)
    if array.ndim not in (2, 3):
        raise InputError(f"{name}: label map must be 2D or 3D, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise InputError(f"{name}: label map must hold integers, got dtype {array.dtype} with non-integer values")


def _label_pair(fixed_labels: np.ndarray, warped_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two label maps of one grid; return them as integer arrays."""
    fixed = _label_array("fixed_labels", fixed_labels)
    warped = _label_array("warped_labels", warped_labels)
    if fixed.shape != warped.shape:
        raise InputError(f"fixed_labels shape {fixed.shape} differs from warped_labels shape {warped.shape}")
    return fixed, warped


def _label_list(labels: Sequence[int]) -> list[int]:
    """Validate a non-empty list of distinct integer labels."""
    result = [int(label) for label in labels]
    if not result:
        raise InputError("labels: at least one label is required")
    if len(set(result)) != len(result):
        raise InputError(f"labels: duplicates are not allowed, got {result}")
    return result


def _spacing(spacing_mm: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate ``ndim`` positive finite voxel sizes in mm."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing_mm must be {ndim} positive finite numbers (mm), got {spacing_mm}")
    return spacing


def _displacement(disp_vox: np.ndarray) -> np.ndarray:
    """Validate a finite displacement of shape ``(ndim, *spatial)`` with ndim 2 or 3.

    float32 and float64 fields keep their precision; other types become float64.
    """
    disp = np.asarray(disp_vox)
    if disp.dtype not in (np.float32, np.float64):
        disp = disp.astype(np.float64)
    if disp.ndim not in (3, 4) or disp.shape[0] != disp.ndim - 1:
        raise InputError(f"disp_vox must have shape (ndim, *spatial) with ndim 2 or 3, got {disp.shape}")
    if not np.all(np.isfinite(disp)):
        raise InputError("disp_vox holds NaN or infinite values")
    return disp


# --------------------------------------------------------------------------- overlap


def _partition_labels(
    fixed: np.ndarray, warped: np.ndarray, labels: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Split ``labels`` into (present in at least one map, absent from both maps)."""
    present = set(np.unique(fixed).tolist()) | set(np.unique(warped).tolist())
    scored = [label for label in labels if label in present]
    skipped = [label for label in labels if label not in present]
    return scored, skipped


def _dice(fixed_mask: np.ndarray, warped_mask: np.ndarray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|) of two boolean masks, not both empty."""
    total = int(fixed_mask.sum()) + int(warped_mask.sum())
    return 2.0 * int(np.logical_and(fixed_mask, warped_mask).sum()) / total


def _dice_scores(
    fixed_labels: np.ndarray, warped_labels: np.ndarray, labels: Sequence[int]
) -> tuple[dict[int, float], list[int]]:
    """Validated inputs -> (``{label: dice}`` for labels present in a map, labels absent from both)."""
    fixed, warped = _label_pair(fixed_labels, warped_labels)
    scored, skipped = _partition_labels(fixed, warped, _label_list(labels))
    return {label: _dice(fixed == label, warped == label) for label in scored}, skipped


def dice_per_label(
    fixed_labels: np.ndarray, warped_labels: np.ndarray, labels: Sequence[int]
) -> dict[int, float]:
    """Dice overlap per label between the fixed and the warped moving label maps.

    Args:
        fixed_labels: (*spatial) integer label map of the fixed (atlas) image.
        warped_labels: (*spatial) integer label map of the moving image warped onto the fixed grid.
        labels: the labels to score (distinct integers).

    Returns:
        ``{label: dice}`` for every requested label present in at least one map (a label present
        in one map only scores 0.0). Labels absent from both maps are not scored and not in the
        result; :func:`dice_summary` lists them.
    """
    return _dice_scores(fixed_labels, warped_labels, labels)[0]


def dice_summary(fixed_labels: np.ndarray, warped_labels: np.ndarray, labels: Sequence[int]) -> DiceSummary:
    """Per-label Dice, their mean and the labels skipped because absent from both maps.

    Arguments as in :func:`dice_per_label`. Raises InputError when every requested label is
    absent from both maps (there is nothing to average).
    """
    per_label, skipped = _dice_scores(fixed_labels, warped_labels, labels)
    if not per_label:
        raise InputError(f"labels: none of the requested labels {list(labels)} is present in either label map")
    return {"per_label": per_label, "mean": float(np.mean(list(per_label.values()))), "skipped": skipped}


# --------------------------------------------------------------------------- surface distance


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty mask, grown by ``margin`` voxels and clipped."""
    coords = np.nonzero(mask)
    return tuple(
        slice(max(int(c.min()) - margin, 0), min(int(c.max()) + margin + 1, n))
        for c, n in zip(coords, mask.shape, strict=True)
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: the mask minus its erosion.

    The erosion uses the face-connected structuring element and treats voxels outside the
    array as background, so mask voxels on the array border are surface voxels.
    """
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_percentile(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile (mm) of the distances from each ``from_surface`` voxel to ``to_surface``."""
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return float(np.percentile(distance_to[from_surface], HD95_PERCENTILE))


def _hd95(fixed_mask: np.ndarray, warped_mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Robust (95th percentile) symmetric Hausdorff distance in mm of two non-empty masks.

    Both masks are cropped to the bounding box of their union grown by one voxel, which
    leaves the surfaces and all surface-to-surface distances unchanged.
    """
    box = _bounding_box(fixed_mask | warped_mask, margin=1)
    fixed_surface = _surface(fixed_mask[box])
    warped_surface = _surface(warped_mask[box])
    return max(
        _directed_percentile(fixed_surface, warped_surface, spacing),
        _directed_percentile(warped_surface, fixed_surface, spacing),
    )


def hd95_summary(
    fixed_labels: np.ndarray,
    warped_labels: np.ndarray,
    labels: Sequence[int],
    spacing_mm: Sequence[float],
    convention: str = "voxel",
) -> HD95Summary:
    """Per-label HD95 in mm, their mean over defined values, skipped and undefined labels.

    HD95 = max(P95 of the fixed->warped surface distances, P95 of warped->fixed) in MONAI's
    voxel-surface convention (``hd95_voxel_mean`` of metrics.json). Surface voxels are mask minus its
    (face-connected) erosion; distances are exact Euclidean distances between voxel centres in mm
    (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing_mm``); P95 is
    ``numpy.percentile`` with linear interpolation, each surface voxel weighted equally. This is
    NOT the convention of DeepMind's surface-distance package and Learn2Reg (surfels weighted by
    area, :mod:`registration_core.evaluation.surface`, ``hd95_mean``), which gives smaller
    values on the same masks.

    Labels absent from both maps are skipped (listed in ``skipped``). A label present in one map
    only has no surface to measure against: its HD95 is NaN and ``undefined[label]`` says which
    map holds it. ``mean`` averages the defined (non-NaN) values; it is NaN when none is defined.

    Args:
        fixed_labels, warped_labels: (*spatial) integer label maps on one grid.
        labels: the labels to measure (distinct integers).
        spacing_mm: ndim voxel sizes in mm, array axis order.
        convention: ``voxel`` (above, MONAI) or ``surfel`` (DeepMind surface-distance, Learn2Reg:
            :func:`registration_core.evaluation.surface.hd95_surfel`).
    """
    if convention not in HD95_CONVENTIONS:
        raise InputError(f"convention: {convention!r} is not an HD95 convention; allowed: {', '.join(HD95_CONVENTIONS)}")
    distance = _hd95 if convention == "voxel" else hd95_surfel
    fixed, warped = _label_pair(fixed_labels, warped_labels)
    spacing = _spacing(spacing_mm, fixed.ndim)
    scored, skipped = _partition_labels(fixed, warped, _label_list(labels))
    per_label: dict[int, float] = {}
    undefined: dict[int, str] = {}
    for label in scored:
        fixed_mask, warped_mask = fixed == label, warped == label
        if fixed_mask.any() and warped_mask.any():
            per_label[label] = distance(fixed_mask, warped_mask, spacing)
        else:
            per_label[label] = math.nan
            holder = "fixed" if fixed_mask.any() else "warped"
            undefined[label] = f"present in {holder} labels only"
    defined = [value for value in per_label.values() if not math.isnan(value)]
    mean = float(np.mean(defined)) if defined else math.nan
    return {"per_label": per_label, "mean": mean, "skipped": skipped, "undefined": undefined}


def hd95_per_label(
    fixed_labels: np.ndarray, warped_labels: np.ndarray, labels: Sequence[int], spacing_mm: Sequence[float]
) -> dict[int, float]:
    """``{label: HD95 in mm}`` for labels present in at least one map (NaN if in one only).

    See :func:`hd95_summary` for the definition and for the reasons of NaN values.
    """
    return hd95_summary(fixed_labels, warped_labels, labels, spacing_mm)["per_label"]


# --------------------------------------------------------------------------- Jacobian


def jacobian_stats(disp_vox: np.ndarray, mask: np.ndarray | None = None) -> JacobianStats:
    """Statistics of the Jacobian determinant of ``x -> x + u(x)`` (central differences).

    Args:
        disp_vox: (ndim, *spatial) displacement in voxels of the fixed grid.
        mask: optional (*spatial) boolean mask of the voxels to count; default every voxel.

    Returns:
        neg_jac_ratio: r^D, fraction of the counted voxels with detJ <= 0.
        neg_jac_sum: s^D, sum over the counted voxels of relu(-detJ).
        sdlogj: standard deviation (ddof 0) of log(detJ) over the counted voxels with detJ > 0.
            Non-positive determinants are excluded here and measured by r^D and s^D instead
            (Learn2Reg clips detJ + 3 to a small positive value before the log); NaN if no
            counted voxel has detJ > 0.
        detj_min, detj_max: extreme determinants over the counted voxels.
        n_voxels: number of counted voxels.
    """
    disp = _displacement(disp_vox)
    spatial = disp.shape[1:]
    if min(spatial) < 2:
        raise InputError(f"disp_vox needs at least 2 voxels along every axis for derivatives, got {spatial}")
    if mask is None:
        keep = np.ones(spatial, dtype=bool)
    else:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != spatial:
            raise InputError(f"mask shape {keep.shape} differs from the displacement grid {spatial}")
        if not keep.any():
            raise InputError("mask is empty: no voxel to compute Jacobian statistics on")
    detj_all = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp))[None], scheme="central")[0]
    detj = detj_all.detach().cpu().numpy().astype(np.float64)[keep]
    positive = detj[detj > 0]
    return {
        "neg_jac_ratio": float(np.mean(detj <= 0)),
        "neg_jac_sum": float(np.sum(np.maximum(-detj, 0.0))),
        "sdlogj": float(np.std(np.log(positive))) if positive.size else math.nan,
        "detj_min": float(detj.min()),
        "detj_max": float(detj.max()),
        "n_voxels": int(detj.size),
    }


L2R_CROP = 2
"""Voxels cropped from every side before Learn2Reg's SDlogJ (its ``jacobian[..., 2:-2, 2:-2, 2:-2]``)."""
L2R_SHIFT = 3.0
"""Learn2Reg adds 3 to det J before the log (``log(clip(detJ + 3, 1e-9, 1e9))``)."""
L2R_CLIP = (1e-9, 1e9)


class JacobianConventions(TypedDict):
    """Result of :func:`jacobian_conventions`: Jacobian statistics as published tables compute them."""

    sdlogj_l2r: float
    neg_jac_pct_nodeo: float
    neg_jac_sum_nodeo: float


def sdlogj_l2r(detj_central: np.ndarray) -> float:
    """Learn2Reg's SDlogJ from central-difference determinants on the whole grid.

    ``std(log(clip(detJ + 3, 1e-9, 1e9)))`` (ddof 0) over the grid cropped by :data:`L2R_CROP`
    voxels on every side. Learn2Reg differentiates with ``scipy.ndimage.correlate`` and the kernel
    ``[-0.5, 0, 0.5]`` (zero outside the grid); after the crop every remaining voxel has both
    neighbours inside, so any central-difference scheme gives the same determinants there.

    Args:
        detj_central: (*spatial) det J of ``x -> x + u(x)``, u in voxels, central differences.

    Returns NaN when the crop leaves no voxel.
    """
    crop = tuple(slice(L2R_CROP, n - L2R_CROP) for n in detj_central.shape)
    inner = np.asarray(detj_central, dtype=np.float64)[crop]
    if inner.size == 0:  # a grid of at most 4 voxels along an axis: nothing is left after the crop
        return math.nan
    return float(np.std(np.log(np.clip(inner + L2R_SHIFT, *L2R_CLIP))))


def jacobian_conventions(disp_vox: np.ndarray) -> JacobianConventions:
    """Jacobian statistics in the conventions of Learn2Reg and of the NODEO paper.

    Args:
        disp_vox: (ndim, *spatial) displacement in voxels of the fixed grid.

    Returns:
        sdlogj_l2r: see :func:`sdlogj_l2r` (central differences, 2-voxel crop, log(clip(detJ + 3)));
            NaN on a grid with at most 4 voxels along an axis.
        neg_jac_pct_nodeo: r^D as NODEO reports it, in percent: 100 x the fraction of voxels with
            det J <= 0, J by forward differences over the voxels whose forward neighbours exist
            (``n - 1`` per axis).
        neg_jac_sum_nodeo: s^D as NODEO reports it: sum of max(-det J, 0), forward differences.
    """
    disp = _displacement(disp_vox)
    if min(disp.shape[1:]) < 2:
        raise InputError(f"disp_vox needs at least 2 voxels along every axis for derivatives, got {disp.shape[1:]}")
    field = torch.from_numpy(np.ascontiguousarray(disp))[None]
    central = jacobian_determinant(field, scheme="central")[0].detach().cpu().numpy()
    forward = jacobian_determinant(field, scheme="forward")[0].detach().cpu().numpy().astype(np.float64)
    return {
        "sdlogj_l2r": sdlogj_l2r(central),
        "neg_jac_pct_nodeo": float(100.0 * np.mean(forward <= 0)),
        "neg_jac_sum_nodeo": float(np.sum(np.maximum(-forward, 0.0))),
    }


# --------------------------------------------------------------------------- landmarks


def _points(name: str, points_vox: np.ndarray, ndim: int) -> np.ndarray:
    """Validate finite points of shape (N, ndim), N >= 1."""
    points = np.array(points_vox, dtype=np.float64)  # a writable copy (torch warns on read-only arrays)
    if points.ndim != 2 or points.shape[1] != ndim or points.shape[0] == 0:
        raise InputError(f"{name} must have shape (N, {ndim}) with N >= 1, got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise InputError(f"{name} holds NaN or infinite coordinates")
    return points


def _point_pair(
    fixed_points_vox: np.ndarray, moving_points_vox: np.ndarray, ndim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate corresponding fixed and moving points of one count."""
    fixed = _points("fixed_points_vox", fixed_points_vox, ndim)
    moving = _points("moving_points_vox", moving_points_vox, ndim)
    if fixed.shape[0] != moving.shape[0]:
        raise InputError(
            f"landmark counts differ: {fixed.shape[0]} fixed points vs {moving.shape[0]} moving points"
        )
    return fixed, moving


def _error_mm(mapped_vox: np.ndarray, target_vox: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """(N,) Euclidean distances in mm between voxel coordinates (N, ndim) on one grid."""
    return np.linalg.norm((mapped_vox - target_vox) * np.asarray(spacing), axis=1)


def tre_mm(
    fixed_points_vox: np.ndarray,
    moving_points_vox: np.ndarray,
    disp_vox: np.ndarray,
    spacing_mm: Sequence[float],
) -> np.ndarray:
    """Target registration error in mm of each landmark pair.

    The displacement is interpolated linearly at each fixed landmark p; the error is
    ``||(p + u(p) - q) * spacing_mm||`` with q the corresponding moving landmark (both in
    continuous voxel coordinates of the shared fixed/moving grid). Within half a voxel outside
    the outermost voxel centres the displacement of the nearest border voxel is used.

    Args:
        fixed_points_vox: (N, ndim) fixed-image landmarks, voxel coordinates within the image
            extent ``[-0.5, n - 0.5]`` per axis (as accepted by ``io.load_landmarks``).
        moving_points_vox: (N, ndim) corresponding moving-image landmarks, voxel coordinates.
        disp_vox: (ndim, *spatial) displacement in voxels of the fixed grid.
        spacing_mm: ndim voxel sizes in mm, array axis order.

    Returns:
        (N,) errors in mm.
    """
    disp = _displacement(disp_vox)
    ndim = disp.shape[0]
    fixed, moving = _point_pair(fixed_points_vox, moving_points_vox, ndim)
    spacing = _spacing(spacing_mm, ndim)
    upper = np.asarray(disp.shape[1:], dtype=np.float64) - 0.5
    outside = np.any((fixed < -0.5) | (fixed > upper), axis=1)
    if outside.any():
        raise InputError(
            f"fixed_points_vox: {int(outside.sum())} landmark(s) lie outside the displacement grid's extent "
            f"[-0.5, n - 0.5] per axis (first: index {int(np.argmax(outside))})"
        )
    return _error_mm(fixed + sample_displacement_at(disp, fixed), moving, spacing)


def tre_before(
    fixed_points_vox: np.ndarray, moving_points_vox: np.ndarray, spacing_mm: Sequence[float]
) -> np.ndarray:
    """(N,) landmark distances in mm before registration, ``||(p - q) * spacing_mm||`` (u = 0).

    Arguments as in :func:`tre_mm`; ndim (2 or 3) is taken from ``spacing_mm``.
    """
    if len(spacing_mm) not in (2, 3):
        raise InputError(f"spacing_mm must hold 2 or 3 voxel sizes (mm), got {spacing_mm}")
    spacing = _spacing(spacing_mm, len(spacing_mm))
    fixed, moving = _point_pair(fixed_points_vox, moving_points_vox, len(spacing))
    return _error_mm(fixed, moving, spacing)


# --------------------------------------------------------------------------- known truth and similarity


class TruthError(TypedDict):
    """Result of :func:`displacement_error_mm` (all in mm, over the voxels of the mask)."""

    mean: float
    max: float
    before: float
    n_voxels: int


def _mask_or_all(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A non-empty boolean mask of ``shape`` (None: every voxel)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    keep = np.asarray(mask) > 0
    if keep.shape != shape:
        raise InputError(f"mask shape {keep.shape} differs from the grid {shape}")
    if not keep.any():
        raise InputError("mask is empty: no voxel to measure")
    return keep


def displacement_error_mm(
    disp_vox: np.ndarray, truth_vox: np.ndarray, spacing_mm: Sequence[float], mask: np.ndarray | None = None
) -> TruthError:
    """Dense target registration error against a known true displacement, in mm.

    At every voxel ``x`` of the mask, ``|(u(x) - d(x)) * spacing_mm|``: the distance between the
    moving point the registration assigns to ``x`` and the true one (both fields map a fixed point
    ``x`` to the moving point ``x + field(x)``; orthogonal voxel axes).

    Args:
        disp_vox: (ndim, *spatial) estimated displacement in voxels of the fixed grid.
        truth_vox: (ndim, *spatial) true displacement in voxels of the same grid.
        spacing_mm: ndim voxel sizes in mm, array axis order.
        mask: optional (*spatial) mask, nonzero where to measure (e.g. the lungs); default every voxel.

    Returns:
        mean and max error (mm); ``before``: the mean error of the zero field (mean ``|d|`` in mm);
        ``n_voxels`` measured.
    """
    estimate, truth = _displacement(disp_vox), _displacement(truth_vox)
    if estimate.shape != truth.shape:
        raise InputError(f"disp_vox shape {estimate.shape} differs from truth_vox shape {truth.shape}")
    spacing = np.asarray(_spacing(spacing_mm, truth.shape[0])).reshape(-1, *([1] * (truth.ndim - 1)))
    keep = _mask_or_all(mask, truth.shape[1:])
    error = np.sqrt(np.sum(((estimate.astype(np.float64) - truth) * spacing) ** 2, axis=0))[keep]
    before = np.sqrt(np.sum((truth.astype(np.float64) * spacing) ** 2, axis=0))[keep]
    return {
        "mean": float(error.mean()),
        "max": float(error.max()),
        "before": float(before.mean()),
        "n_voxels": int(keep.sum()),
    }


def image_similarity(fixed: np.ndarray, other: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Global normalised cross-correlation and mean squared error of two images on one grid.

    ``ncc`` is Pearson's correlation of the intensities over the voxels of the mask (every voxel by
    default), in [-1, 1] (NaN when either image is constant there); ``mse`` is the mean of
    ``(fixed - other)^2`` in squared intensity units.

    Args:
        fixed, other: (*spatial) finite images (e.g. fixed and warped moving).
        mask: optional (*spatial) mask, nonzero where to compare.
    """
    a, b = np.asarray(fixed, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("images hold NaN or infinite values")
    keep = _mask_or_all(mask, a.shape)
    a, b = a[keep], b[keep]
    mse = float(np.mean((a - b) ** 2))
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    ncc = float(np.sum(a * b)) / denominator if denominator > 0 else math.nan
    return {"ncc": ncc, "mse": mse}
