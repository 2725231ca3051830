"""Basic preprocessing of :class:`registration_core.core.io.Image`: intensity and geometry steps.

Every function is pure (returns a new Image). Arrays are in array index order
``(i, j[, k])``; spacings are in mm; affines map voxel indices to RAS+ mm (2D images use
the affine's in-plane block, see :func:`registration_core.core.io.spatial_affine`).

:func:`run_steps` applies a configured list of steps ``{"step": name, **settings}`` to an
image and, for geometric steps, to its label map. Steps live in the registry :data:`STEPS`,
filled by :func:`register_step`: adding a step is one decorated function declaring its typed
settings (:class:`registration_core.core.params.Param`); the config validation, the CLI and
the config schema's documentation read them.

:func:`prepare_subject` runs the steps once on a subject's image and carries its labels, mask
and landmarks along. The ``affine_align`` step registers the subject onto a *reference* subject
(another subject of the dataset, taken through the same earlier steps; the step's ``reference``
setting only names that subject for the workflow) and resamples everything onto its grid, so
that a later ``slice`` cuts every subject at the same anatomical level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import nibabel.orientations as nio
import numpy as np
import SimpleITK as sitk

from registration_core.core.io import Image, image_to_sitk, spatial_affine
from registration_core.core.params import Param, parse_params
from registration_core.errors import InputError
from registration_core.preprocessing.align import ALIGN_PARAMS, affine_align, apply_alignment

Interpolation = Literal["linear", "cubic", "nearest"]

_SITK_INTERPOLATORS = {"linear": sitk.sitkLinear, "cubic": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def _name(image: Image) -> str:
    """How an image is named in error messages."""
    return image.path or "image"


# --------------------------------------------------------------------------- intensity


def clip_intensity(
    image: Image,
    low: float | None = None,
    high: float | None = None,
    percentiles: Sequence[float] | None = None,
) -> Image:
    """Clip intensities to ``[low, high]`` (either may be None: no bound on that side).

    ``percentiles=(p_low, p_high)`` (in [0, 100]) instead takes the bounds from the image's
    own intensity percentiles; it cannot be combined with ``low``/``high``. Example: lung CT
    ``low=-1000, high=0`` (HU).
    """
    if percentiles is not None:
        if low is not None or high is not None:
            raise InputError("clip: give either low/high or percentiles, not both")
        if len(percentiles) != 2 or not 0 <= percentiles[0] <= percentiles[1] <= 100:
            raise InputError(
                f"clip: percentiles {list(percentiles)} must be [p_low, p_high] with 0 <= p_low <= p_high <= 100"
            )
        low, high = (float(v) for v in np.percentile(image.data, percentiles))
    if low is None and high is None:
        raise InputError("clip: needs low and/or high, or percentiles")
    if low is not None and high is not None and low > high:
        raise InputError(f"clip: low {low} is above high {high}")
    return image.with_data(np.clip(image.data, low, high).astype(np.float32))


def normalize(image: Image, mode: Literal["minmax", "zscore"] = "minmax") -> Image:
    """Rescale intensities: "minmax" -> [0, 1]; "zscore" -> zero mean, unit standard deviation (float32)."""
    data = image.data.astype(np.float64)
    if mode == "minmax":
        offset, scale = data.min(), data.max() - data.min()
    elif mode == "zscore":
        offset, scale = data.mean(), data.std()
    else:
        raise InputError(f"normalize: mode {mode!r} is not allowed; allowed: 'minmax', 'zscore'")
    if scale == 0:
        raise InputError(f"normalize: {_name(image)} is constant; cannot normalise it")
    return image.with_data(((data - offset) / scale).astype(np.float32))


# ---------------------------------------------------------------------------- geometry


def extract_slice(image: Image, axis: int, index: int | float | str = "middle") -> Image:
    """Extract the 2D slice ``index`` along array ``axis`` of a 3D image.

    Args:
        axis: 0, 1 or 2 (array axis, not a physical direction).
        index: an int voxel index; "middle" (``n // 2``); or a float fraction in [0, 1] of
            the extent (voxel ``round(f * (n - 1))``).

    Returns:
        A 2D Image with the remaining two axes in their array order. Its affine is
        ``diag(s_a, s_b, s_axis, 1)``: the in-plane spacings, identity direction (the plane
        becomes the RAS x-y plane), origin 0. The original position is not kept.
    """
    if image.ndim != 3:
        raise InputError(f"slice: {_name(image)} is {image.ndim}D; slices are taken from 3D images")
    if axis not in (0, 1, 2) or isinstance(axis, bool):
        raise InputError(f"slice: axis {axis!r} is not allowed; allowed: 0, 1, 2")
    size = image.shape[axis]
    if index == "middle":
        position = size // 2
    elif isinstance(index, float):
        if not 0.0 <= index <= 1.0:
            raise InputError(f"slice: fraction {index} must lie in [0, 1]")
        position = int(round(index * (size - 1)))
    elif isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if not 0 <= index < size:
            raise InputError(f"slice: index {index} is outside [0, {size - 1}] along axis {axis}")
        position = int(index)
    else:
        raise InputError(f"slice: index {index!r} must be an int, 'middle' or a float fraction in [0, 1]")
    in_plane = [a for a in range(3) if a != axis]
    spacing = image.spacing
    affine = np.diag([spacing[in_plane[0]], spacing[in_plane[1]], spacing[axis], 1.0])
    return Image(data=np.take(image.data, position, axis=axis).copy(), affine=affine, path=None)


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> np.ndarray:
    """A scalar or a sequence of ``ndim`` positive numbers -> array (ndim,)."""
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,) or not np.all(values > 0):
        raise InputError(f"resample: {name} {value!r} must be a positive number or {ndim} positive numbers")
    return values


def _interpolator(image: Image, interpolation: Interpolation | None) -> int:
    """SimpleITK interpolator: default nearest for integer data (labels), linear otherwise."""
    is_labels = np.issubdtype(image.data.dtype, np.integer)
    interpolation = interpolation or ("nearest" if is_labels else "linear")
    if interpolation not in _SITK_INTERPOLATORS:
        allowed = ", ".join(_SITK_INTERPOLATORS)
        raise InputError(f"resample: interpolation {interpolation!r} is not allowed; allowed: {allowed}")
    if is_labels and interpolation != "nearest":
        raise InputError(f"resample: {_name(image)} holds integer labels; only 'nearest' interpolation is allowed")
    return _SITK_INTERPOLATORS[interpolation]


MAX_OUTPUT_VOXELS = 2**28
"""Largest grid a step may produce: 268 million voxels, 1 GiB as float32 (a 512 x 512 x 1024 CT).
A larger one is almost always a unit slip (a spacing in m taken for mm)."""


def check_output_size(shape: Sequence[float] | np.ndarray, step: str, why: str = "") -> None:
    """InputError naming ``step`` when a grid of ``shape`` voxels exceeds :data:`MAX_OUTPUT_VOXELS`,
    with the estimated size of the float32 image; ``why`` says where the shape comes from."""
    voxels = float(np.prod(np.asarray(shape, dtype=np.float64)))
    if voxels > MAX_OUTPUT_VOXELS:
        size = f"{voxels * 4 / 2**30:.3g} GiB"
        reason = f" from {why}" if why else ""
        raise InputError(
            f"{step}: output grid {[int(n) for n in shape]}{reason} has {voxels:.3g} voxels ({size} as float32), "
            f"more than {MAX_OUTPUT_VOXELS} ({MAX_OUTPUT_VOXELS * 4 / 2**30:.3g} GiB); check the units (mm)"
        )


def resample(
    image: Image,
    spacing: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    scale: float | Sequence[float] | None = None,
    interpolation: Interpolation | None = None,
) -> Image:
    """Resample onto a new grid covering the same physical extent (SimpleITK).

    Exactly one of:
        spacing: target voxel size in mm (scalar or per axis); the shape becomes
            ``round(n * s / spacing)`` and the spacing is exactly the one asked for.
        shape: target shape; the spacing becomes ``n * s / shape`` (extent kept exactly).
        scale: shape factor (e.g. 0.5 halves every axis); the shape becomes
            ``round(n * scale)`` and the spacing ``n * s / shape``.

    The grid's outer edge (voxel corner of index -1/2) and direction are kept, so the new
    voxel centres stay within the original extent. ``interpolation`` defaults to "nearest"
    for integer data (label maps, which keep their dtype and gain no new labels) and
    "linear" otherwise ("cubic" = cubic B-spline); integer data only allows "nearest".
    """
    if sum(option is not None for option in (spacing, shape, scale)) != 1:
        raise InputError("resample: give exactly one of spacing, shape, scale")
    interpolator = _interpolator(image, interpolation)
    old_shape, old_spacing = np.asarray(image.shape, dtype=np.float64), np.asarray(image.spacing)
    extent = old_shape * old_spacing
    if spacing is not None:
        new_spacing = _per_axis(spacing, image.ndim, "spacing")
        new_shape = np.maximum(1, np.round(extent / new_spacing))
    else:
        if shape is not None:
            new_shape = _per_axis(shape, image.ndim, "shape")
            if not np.all(new_shape == np.round(new_shape)):
                raise InputError(f"resample: shape {list(shape)} must be integers")
        else:
            new_shape = np.maximum(1, np.round(old_shape * _per_axis(scale, image.ndim, "scale")))
        new_spacing = extent / new_shape
    check_output_size(new_shape, "resample", f"new spacing {np.round(new_spacing, 4).tolist()} mm")
    ratio = new_spacing / old_spacing  # new voxel size in old voxels
    offset = 0.5 * ratio - 0.5  # new voxel 0 centre in old voxel coordinates

    source = sitk.GetImageFromArray(np.ascontiguousarray(image.data.transpose()))
    source.SetSpacing(old_spacing.tolist())
    resampled = sitk.Resample(
        source,
        [int(n) for n in new_shape],
        sitk.Transform(),
        interpolator,
        (offset * old_spacing).tolist(),
        new_spacing.tolist(),
        np.eye(image.ndim).ravel().tolist(),
        0.0,
        source.GetPixelID(),
    )
    index_map = np.eye(4)  # new voxel index -> old voxel index
    index_map[: image.ndim, : image.ndim] = np.diag(ratio)
    index_map[: image.ndim, 3] = offset
    return Image(data=sitk.GetArrayFromImage(resampled).transpose(), affine=image.affine @ index_map, path=None)


def resample_to(image: Image, reference: Image, interpolation: Interpolation | None = None) -> Image:
    """Resample ``image`` onto ``reference``'s grid through physical space (SimpleITK).

    Use it for images of one subject on different grids (e.g. a lung mask stored at a finer
    resolution than its CT). Voxels of the reference outside ``image`` get 0. Interpolation
    defaults as in :func:`resample` (nearest for integer labels, which keep their dtype).
    Both grids must be representable in ITK (orthogonal axes; 2D: in the x-y plane).
    """
    if image.ndim != reference.ndim:
        raise InputError(f"resample_to: {_name(image)} is {image.ndim}D but the reference is {reference.ndim}D")
    source = image_to_sitk(image)
    target = image_to_sitk(reference.with_data(np.zeros(reference.shape, np.uint8)))
    interpolator = _interpolator(image, interpolation)
    resampled = sitk.Resample(source, target, sitk.Transform(), interpolator, 0.0, source.GetPixelID())
    return reference.with_data(sitk.GetArrayFromImage(resampled).transpose())


def reorient(image: Image, orientation: Literal["RAS"] = "RAS") -> Image:
    """Permute/flip the array axes so they point to R, A[, S] (nibabel's closest canonical).

    Only "RAS" is offered. The physical grid is unchanged (same voxels, new index order);
    2D images are reoriented within their in-plane block (axes -> R, A).
    """
    if orientation != "RAS":
        raise InputError(f"reorient: orientation {orientation!r} is not allowed; allowed: 'RAS'")
    ndim = image.ndim
    current = nio.io_orientation(spatial_affine(image.affine, ndim))
    if np.isnan(current).any():
        raise InputError(f"reorient: {_name(image)} has an in-plane axis without a clear R/A/S direction")
    transform = nio.ornt_transform(current, nio.axcodes2ornt("RAS"[:ndim]))
    if ndim == 2:  # keep the singleton third axis in place
        index_map = nio.inv_ornt_aff(np.vstack([transform, [[2, 1]]]), (*image.shape, 1))
    else:
        index_map = nio.inv_ornt_aff(transform, image.shape)
    data = nio.apply_orientation(image.data, transform)
    return Image(data=np.ascontiguousarray(data), affine=image.affine @ index_map, path=None)


def foreground_centre(mask: np.ndarray) -> np.ndarray:
    """Centre (ndim,) in voxels of the bounding box of a non-empty boolean mask."""
    coords = np.argwhere(mask)
    if len(coords) == 0:
        raise InputError("crop_pad: the foreground is empty (nothing above the threshold / no label)")
    return (coords.min(axis=0) + coords.max(axis=0)) / 2.0


def crop_pad(image: Image, shape: Sequence[int], centre: Sequence[float], pad_value: float = 0.0) -> Image:
    """Crop and/or pad to ``shape`` voxels, the window centred (to the voxel) on ``centre``.

    Args:
        shape: target shape (ndim positive ints).
        centre: window centre in voxel coordinates of ``image`` (e.g. :func:`foreground_centre`).
        pad_value: value of voxels outside the original image (labels: use 0).

    The window starts at voxel ``s = round(centre - (shape - 1) / 2)``; new voxel ``v`` is old
    voxel ``v + s``, so the affine becomes ``affine @ translate(s)`` and every voxel keeps its
    physical position (landmarks map exactly with :func:`map_landmarks`). The dtype is kept.
    """
    target = np.asarray(shape)
    if target.shape != (image.ndim,) or not np.all(target >= 1) or not np.all(target == np.round(target)):
        raise InputError(f"crop_pad: shape {list(shape)} must be {image.ndim} positive integers")
    check_output_size(target, "crop_pad")
    start = np.round(np.asarray(centre, dtype=np.float64) - (target - 1) / 2.0).astype(int)
    old = np.asarray(image.shape)
    src_lo, src_hi = np.maximum(start, 0), np.minimum(start + target, old)
    data = np.full(tuple(int(n) for n in target), pad_value, dtype=image.data.dtype)
    if np.all(src_hi > src_lo):
        dst = tuple(slice(int(lo - s), int(hi - s)) for lo, hi, s in zip(src_lo, src_hi, start))
        data[dst] = image.data[tuple(slice(int(lo), int(hi)) for lo, hi in zip(src_lo, src_hi))]
    translate = np.eye(4)
    translate[: image.ndim, 3] = start
    return Image(data=data, affine=image.affine @ translate, path=None)


def map_landmarks(points_vox: np.ndarray, source: Image, target: Image) -> np.ndarray:
    """Voxel coordinates (N, ndim) on ``source``'s grid -> the same physical points on ``target``'s grid.

    Exact (through RAS mm) for steps that keep physical positions: reorient, resample,
    crop_pad. Not meaningful across ``slice`` (whose output forgets its position).
    """
    from registration_core.core.io import ras_to_voxel, voxel_to_ras

    points_vox = np.asarray(points_vox, dtype=np.float64)
    if points_vox.ndim != 2 or points_vox.shape[1] != source.ndim or source.ndim != target.ndim:
        raise InputError(
            f"map_landmarks: points of shape {points_vox.shape} do not fit {source.ndim}D -> {target.ndim}D"
        )
    return ras_to_voxel(voxel_to_ras(points_vox, source.affine), target.affine)


# ------------------------------------------------------------------------------- steps

StepFunction = Callable[..., tuple[Image, Image | None]]


@dataclass(frozen=True)
class Step:
    """A preprocessing step: its name, its typed settings and the function that runs it.

    ``function(image, labels, **settings) -> (image, labels)`` receives every setting resolved
    (defaults filled in); ``None`` for ``affine_align``, which :func:`prepare_subject` runs itself
    (it needs the reference subject's image).
    """

    name: str
    settings: Mapping[str, Param]
    function: StepFunction | None

    def resolve(self, settings: Mapping[str, Any], owner: str) -> dict[str, Any]:
        """Defaults + ``settings``, checked; InputError names ``owner``, the setting and what is allowed."""
        return parse_params(owner, self.settings, settings, kind="setting")


STEPS: dict[str, Step] = {}
"""Step name -> :class:`Step`, in registration order (the order error messages list them in)."""


def register_step(name: str, *settings: Param) -> Callable[[StepFunction], StepFunction]:
    """Register ``function(image, labels, **settings) -> (image, labels)`` as step ``name`` with
    the declared ``settings`` (no other key is allowed; ``required`` ones must be given)."""

    def decorator(function: StepFunction) -> StepFunction:
        STEPS[name] = Step(name, {p.name: p for p in settings}, function)
        return function

    return decorator


def _positive_or_list(name: str, help: str) -> Param:
    """A positive number (every axis) or 2-3 positive numbers (one per axis), or none."""
    return Param(name, object, None, help, nullable=True, alternatives=(
        Param(name, float, None, "", minimum=0.0, exclusive_minimum=True),
        Param(name, list, None, "", item=float, minimum=0.0, exclusive_minimum=True, min_items=2, max_items=3),
    ))


_SHAPE = dict(item=int, minimum=1, min_items=2, max_items=3)


@register_step("reorient", Param("orientation", str, "RAS", "target axis codes", choices=("RAS",)))
def _reorient_step(image: Image, labels: Image | None, **settings: Any) -> tuple[Image, Image | None]:
    """Reorient image and labels to RAS."""
    return reorient(image, **settings), None if labels is None else reorient(labels, **settings)


@register_step(
    "clip",
    Param("low", float, None, "lower bound (image units, e.g. HU); none: no lower bound", nullable=True),
    Param("high", float, None, "upper bound; none: no upper bound", nullable=True),
    Param("percentiles", list, None, "[p_low, p_high]: bounds from the image's own percentiles (instead of low/high)",
          item=float, minimum=0.0, maximum=100.0, min_items=2, max_items=2, nullable=True),
)
def _clip_step(image: Image, labels: Image | None, **settings: Any) -> tuple[Image, Image | None]:
    """Clip image intensities; labels untouched."""
    return clip_intensity(image, **settings), labels


@register_step("normalize", Param("mode", str, "minmax", "minmax: to [0, 1]; zscore: zero mean, unit standard deviation",
                                  choices=("minmax", "zscore")))
def _normalize_step(image: Image, labels: Image | None, **settings: Any) -> tuple[Image, Image | None]:
    """Normalise image intensities; labels untouched."""
    return normalize(image, **settings), labels


@register_step(
    "slice",
    Param("axis", int, 2, "array axis the slice is taken across", choices=(0, 1, 2)),
    Param("index", object, "middle", "voxel index (integer), middle, or a fraction of the extent in [0, 1] (float)",
          alternatives=(Param("index", int, None, "", minimum=0), Param("index", str, None, "", choices=("middle",)),
                        Param("index", float, None, "", minimum=0.0, maximum=1.0))),
)
def _slice_step(image: Image, labels: Image | None, axis: int, index: int | float | str) -> tuple[Image, Image | None]:
    """Take the same 2D slice of image and labels."""
    plane = extract_slice(image, axis, index)
    return plane, None if labels is None else extract_slice(labels, axis, index)


@register_step(
    "resample",
    _positive_or_list("spacing", "target voxel size in mm, one number or one per axis"),
    Param("shape", list, None, "target shape (voxels per axis)", nullable=True, **_SHAPE),
    _positive_or_list("scale", "shape factor, one number or one per axis (0.5 halves every axis)"),
    Param("interpolation", str, None, "image interpolation (none: linear); labels are always nearest",
          choices=("linear", "cubic"), nullable=True),
)
def _resample_step(image: Image, labels: Image | None, **settings: Any) -> tuple[Image, Image | None]:
    """Resample the image (linear or cubic) and the labels (nearest) onto the same new grid."""
    label_settings = {**settings, "interpolation": "nearest"}
    return resample(image, **settings), None if labels is None else resample(labels, **label_settings)


@register_step(
    "crop_pad",
    Param("shape", list, None, "target shape (voxels per axis)", required=True, **_SHAPE),
    Param("foreground", str, "image", "what the window is centred on: image above threshold, or non-zero labels",
          choices=("image", "labels")),
    Param("threshold", float, None, "foreground: image > threshold (none: above the image's minimum)", nullable=True),
    Param("pad_value", float, None, "value of the image outside its original extent (none: its minimum)", nullable=True),
)
def _crop_pad_step(
    image: Image,
    labels: Image | None,
    shape: Sequence[int],
    foreground: Literal["image", "labels"],
    threshold: float | None,
    pad_value: float | None,
) -> tuple[Image, Image | None]:
    """Crop/pad image and labels to ``shape`` around the bounding box of the foreground.

    The foreground is ``image > threshold`` (default: above the image's minimum) or, with
    ``foreground: labels``, the non-zero labels. The image is padded with ``pad_value``
    (default: its minimum), the labels with 0.
    """
    if foreground == "labels":
        if labels is None:
            raise InputError("crop_pad: foreground 'labels' needs a label map")
        mask = labels.data != 0
    else:
        mask = image.data > (image.data.min() if threshold is None else threshold)
    centre = foreground_centre(mask)
    fill = float(image.data.min()) if pad_value is None else pad_value
    cropped = crop_pad(image, shape, centre, fill)
    return cropped, None if labels is None else crop_pad(labels, shape, centre, 0)


@register_step(
    "lung_mask",
    Param("output", str, "mask", "mask: the mask replaces the image; masked: the CT inside the mask",
          choices=("mask", "masked")),
    Param("body_hu", float, -500.0, "body threshold (HU); the body is the largest component above it"),
    Param("lung_hu", float, -400.0, "lung threshold (HU): air inside the body below it"),
    Param("airway_radius_mm", float, 6.0, "airways narrower than this are removed (mm)",
          minimum=0.0, exclusive_minimum=True),
    Param("closing_radius_mm", float, 4.0, "closing radius that fills vessels into the lungs (mm)",
          minimum=0.0, exclusive_minimum=True),
    Param("min_lung_fraction", float, 0.1, "smallest lung component kept, a fraction of the largest",
          minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Param("background", float, 0.0, "masked: value outside the mask"),
)
def _lung_mask_step(
    image: Image,
    labels: Image | None,
    output: Literal["mask", "masked"],
    background: float,
    **settings: Any,
) -> tuple[Image, Image | None]:
    """Lung mask of a CT in HU (see :mod:`registration_core.preprocessing.lung`); labels untouched.

    ``output: mask`` replaces the image by the mask (uint8, 1 right lung, 2 left lung);
    ``output: masked`` by the CT inside the mask, ``background`` elsewhere. Run it before
    intensity clipping (the thresholds are in HU).
    """
    from registration_core.preprocessing.lung import lung_mask, mask_image

    mask = lung_mask(image, **settings)
    return (mask if output == "mask" else mask_image(image, mask, background)), labels


STEPS["affine_align"] = Step(
    "affine_align",
    {"reference": Param("reference", str, None, "id of the reference subject (of the same dataset)", required=True),
     **ALIGN_PARAMS},
    None,
)
"""``affine_align``: ``reference`` (the reference subject's id, resolved by the caller to the
``reference`` image of :func:`prepare_subject`) and the settings of
:func:`registration_core.preprocessing.align.affine_align`."""


@dataclass(frozen=True)
class Prepared:
    """A subject during preprocessing.

    Attributes:
        image: the intensity image.
        labels: its label map on the image's grid, or None.
        mask: its mask (an integer map) on the image's grid, or None.
        landmarks: continuous voxel coordinates (N, ndim) on the image's grid, or None.
    """

    image: Image
    labels: Image | None = None
    mask: Image | None = None
    landmarks: np.ndarray | None = None


def align_to_reference(subject: Prepared, reference: Image, **settings: Any) -> Prepared:
    """Affinely register ``subject.image`` onto ``reference`` and resample everything on its grid.

    The registration (:func:`registration_core.preprocessing.align.affine_align`, ``settings`` as there) works
    in physical space, so any earlier grid change (reorient, resample, crop) is fine. The image
    is resampled linearly, labels and mask by nearest neighbour (0 outside the subject), and the
    landmarks are mapped exactly through the transform. When ``subject.image`` is the reference
    itself (same grid and voxels: the reference subject) there is nothing to register and the
    subject is returned unchanged.
    """
    if subject.image.ndim != reference.ndim:
        raise InputError(
            f"affine_align: {_name(subject.image)} is {subject.image.ndim}D but the reference is {reference.ndim}D"
        )
    if reference.same_grid(subject.image) and np.array_equal(reference.data, subject.image.data):
        return subject
    transform = affine_align(reference, subject.image, **settings)
    aligned = apply_alignment(transform, reference, subject.image, subject.labels, subject.landmarks)
    mask = None if subject.mask is None else apply_alignment(transform, reference, subject.image, subject.mask).labels
    return Prepared(aligned.image, aligned.labels, mask, aligned.landmarks)


def _run_step(subject: Prepared, name: str, settings: dict[str, Any], reference: Image | None) -> Prepared:
    """One step (``settings`` resolved) on image, labels, mask (a second label map) and landmarks
    (mapped exactly, not across a slice); ``reference``: the reference subject's image at this
    stage (affine_align)."""
    if name == "affine_align":
        if reference is None:
            raise InputError("affine_align: needs the reference subject's image (--reference)")
        return align_to_reference(subject, reference, **{k: v for k, v in settings.items() if k != "reference"})
    function = STEPS[name].function
    assert function is not None
    image, labels = function(subject.image, subject.labels, **settings)
    mask = None if subject.mask is None else function(subject.image, subject.mask, **settings)[1]
    if mask is not None and not mask.same_grid(image, atol=1e-3):  # crop_pad centred on the labels
        raise InputError(f"{name}: the mask would not follow the image (the step depends on the labels)")
    landmarks = subject.landmarks
    if landmarks is not None:
        if name == "slice":
            raise InputError("slice: landmarks cannot follow a slice extraction")
        landmarks = map_landmarks(landmarks, subject.image, image)
    return Prepared(image, labels, mask, landmarks)


def prepare_subject(
    image: Image,
    steps: Sequence[dict[str, Any]],
    labels: Image | None = None,
    mask: Image | None = None,
    landmarks: np.ndarray | None = None,
    reference: Image | None = None,
) -> Prepared:
    """Apply ``steps`` (each ``{"step": name, **settings}``) in order to a subject, each step once.

    Geometric steps (reorient, slice, resample, crop_pad, affine_align) move labels and mask
    (nearest) and map the landmarks (voxels (N, ndim) of the image's grid) exactly; intensity
    steps (clip, normalize) and lung_mask leave them unchanged. ``reference`` is the image of the
    subject an ``affine_align`` step registers onto, as it is before ``steps``: the steps before
    each ``affine_align`` are run on it too, so that subject and reference meet at the same stage
    (and the reference subject itself is left in place). ``labels`` and ``mask`` must lie on the
    image's grid. Any bad step, setting or value raises InputError naming ``steps[i]``.
    """
    resolved = validate_steps(steps)
    for name, other in (("labels", labels), ("mask", mask)):
        if other is not None and not image.same_grid(other, atol=1e-3):
            raise InputError(f"{other.path or name}: not on the grid of {_name(image)} (shape or affine differ)")
    subject = Prepared(image, labels, mask, None if landmarks is None else np.asarray(landmarks, dtype=np.float64))
    for position, (step, settings) in enumerate(zip(steps, resolved)):
        staged_reference = reference
        if step["step"] == "affine_align" and reference is not None and position > 0:
            staged_reference = prepare_subject(reference, steps[:position], reference=reference).image
        try:
            subject = _run_step(subject, step["step"], settings, staged_reference)
        except InputError as exc:
            raise InputError(f"preprocessing steps[{position}]: {exc}") from exc
    return subject


def validate_steps(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check a step list against :data:`STEPS`: the settings of every step, resolved (defaults
    filled in); InputError naming ``steps[i]``, the setting and what is allowed."""
    if not isinstance(steps, Sequence) or isinstance(steps, str):
        raise InputError(f"preprocessing steps must be a list of {{'step': name, ...}}, got {type(steps).__name__}")
    resolved = []
    for position, step in enumerate(steps):
        where = f"preprocessing steps[{position}]"
        if not isinstance(step, dict) or "step" not in step:
            raise InputError(f"{where}: must be a mapping with a 'step' key; allowed steps: {', '.join(STEPS)}")
        name = step["step"]
        if name not in STEPS:
            raise InputError(f"{where}: unknown step {name!r}; allowed: {', '.join(STEPS)}")
        settings = {key: value for key, value in step.items() if key != "step"}
        resolved.append(STEPS[name].resolve(settings, f"{where} ({name})"))
    return resolved


def run_steps(image: Image, labels: Image | None, steps: Sequence[dict[str, Any]]) -> tuple[Image, Image | None]:
    """:func:`prepare_subject` on an image and its label map (or None): (prepared image, prepared labels)."""
    prepared = prepare_subject(image, steps, labels=labels)
    return prepared.image, prepared.labels
