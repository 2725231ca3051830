"""Rigid or affine pre-alignment of a moving image to a fixed one (SimpleITK).

Geometry: images are :class:`registration_core.io.Image` (array index order ``(i, j[, k])``,
affine voxel -> RAS+ mm); SimpleITK works in LPS mm. The estimated transform ``T`` maps a
physical point of the fixed image to the corresponding point of the moving image (ITK's
convention), so the aligned moving image is ``moving o T`` sampled on the fixed grid, and a
moving landmark ``p`` lands at ``T^-1(p)`` on the fixed grid (exact, no resampling).
2D and 3D images share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jsonschema
import numpy as np
import SimpleITK as sitk

from registration_core.errors import InputError
from registration_core.io import Image, _lps_flip, image_to_sitk, ras_to_voxel, voxel_to_ras

TransformKind = Literal["rigid", "affine"]

ALIGN_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "transform": {"enum": ["rigid", "affine"]},
        "shrink_factors": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "iterations": {"type": "integer", "minimum": 1},
        "sampling": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "bins": {"type": "integer", "minimum": 4},
        "seed": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}
"""JSON schema of the settings of :func:`align_to_fixed` (all optional)."""


def check_align_settings(settings: dict) -> dict:
    """Validate alignment settings against :data:`ALIGN_SCHEMA`; InputError names the key and what is allowed."""
    for key in settings:
        if key not in ALIGN_SCHEMA["properties"]:
            raise InputError(f"affine_align: unknown setting {key!r}; allowed: {', '.join(ALIGN_SCHEMA['properties'])}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(ALIGN_SCHEMA).iter_errors(settings))
    if error is not None:
        raise InputError(f"affine_align: setting {error.absolute_path[0]!r}: {error.message}")
    return settings


@dataclass(frozen=True)
class Aligned:
    """The moving image carried onto the fixed grid by an alignment.

    Attributes:
        image: moving image resampled on the fixed grid (linear), float32.
        labels: moving labels resampled on the fixed grid (nearest), or None.
        landmarks: moving landmarks as voxel coordinates (N, ndim) of the fixed grid, or None.
        transform: ``T``, fixed LPS mm -> moving LPS mm.
    """

    image: Image
    labels: Image | None
    landmarks: np.ndarray | None
    transform: sitk.Transform


def affine_align(
    fixed: Image,
    moving: Image,
    transform: TransformKind = "affine",
    shrink_factors: Sequence[int] = (4, 2, 1),
    iterations: int = 200,
    sampling: float = 0.25,
    bins: int = 32,
    seed: int = 0,
) -> sitk.Transform:
    """Estimate ``T`` (fixed LPS mm -> moving LPS mm) maximising Mattes mutual information.

    Regular-step gradient descent (steps in mm of physical shift, from 1 down to 1e-4).

    Args:
        fixed, moving: 2D or 3D intensity images of the same dimension (any grids).
        transform: "rigid" (rotation + translation) or "affine" (12 parameters in 3D).
        shrink_factors: multi-resolution pyramid, coarse to fine (voxels); the smoothing
            sigma at each level is half the shrink factor (voxels, 0 at factor 1).
        iterations: at most this many gradient-descent iterations per level and stage.
        sampling: fraction of fixed voxels sampled (random, seeded) for the metric, in (0, 1].
        bins: histogram bins of the Mattes metric.
        seed: seed of the metric's voxel sampling; ITK's multi-threaded metric sums can still
            change the result slightly between runs (e.g. subcortical Dice 0.600 vs 0.601).

    The transform is centred by the images' intensity moments (centres of mass), optimised
    as a rigid transform, then (for "affine") as an affine transform starting from it.
    """
    if fixed.ndim != moving.ndim:
        raise InputError(f"affine_align: fixed is {fixed.ndim}D but moving is {moving.ndim}D")
    if not 0 < sampling <= 1 or iterations < 1 or bins < 4 or not shrink_factors or min(shrink_factors) < 1:
        raise InputError(
            "affine_align: need 0 < sampling <= 1, iterations >= 1, bins >= 4 and shrink factors >= 1"
        )
    if transform not in ("rigid", "affine"):
        raise InputError(f"affine_align: transform {transform!r} is not allowed; allowed: 'rigid', 'affine'")
    fixed_itk = sitk.Cast(image_to_sitk(fixed), sitk.sitkFloat32)
    moving_itk = sitk.Cast(image_to_sitk(moving), sitk.sitkFloat32)
    ndim = fixed.ndim
    rigid = sitk.CenteredTransformInitializer(
        fixed_itk,
        moving_itk,
        sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    settings = (shrink_factors, iterations, sampling, bins, seed)
    _optimise(fixed_itk, moving_itk, rigid, *settings, moving.path)
    if transform == "rigid":
        return rigid
    affine = sitk.AffineTransform(ndim)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _optimise(fixed_itk, moving_itk, affine, *settings, moving.path)
    return affine


def _optimise(
    fixed_itk: sitk.Image,
    moving_itk: sitk.Image,
    initial: sitk.Transform,
    shrink_factors: Sequence[int],
    iterations: int,
    sampling: float,
    bins: int,
    seed: int,
    moving_name: str | None,
) -> None:
    """Optimise ``initial`` in place: Mattes MI, regular-step gradient descent over a smoothed pyramid."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
    method.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in shrink_factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed_itk, moving_itk)
    except RuntimeError as exc:
        raise InputError(f"affine_align: registration of {moving_name or 'moving'} failed ({exc})") from exc


def map_points_to_fixed(
    points_vox: np.ndarray, transform: sitk.Transform, moving: Image, fixed: Image
) -> np.ndarray:
    """Moving voxel coordinates (N, ndim) -> fixed voxel coordinates (N, ndim) through ``T^-1`` (exact)."""
    points_vox = np.asarray(points_vox, dtype=np.float64)
    if points_vox.ndim != 2 or points_vox.shape[1] != moving.ndim:
        raise InputError(f"landmarks: shape {points_vox.shape} is not (N, {moving.ndim})")
    flip = _lps_flip(moving.ndim)
    inverse = transform.GetInverse()
    moving_lps = voxel_to_ras(points_vox, moving.affine) @ flip
    fixed_lps = np.array([inverse.TransformPoint(tuple(point)) for point in moving_lps]).reshape(-1, moving.ndim)
    return ras_to_voxel(fixed_lps @ flip, fixed.affine)


def apply_alignment(
    transform: sitk.Transform,
    fixed: Image,
    moving: Image,
    moving_labels: Image | None = None,
    moving_landmarks: np.ndarray | None = None,
) -> Aligned:
    """Resample the moving image (linear) and labels (nearest) on the fixed grid; map the landmarks.

    ``moving_landmarks``: voxel coordinates (N, ndim) of the moving grid. Voxels of the fixed
    grid that fall outside the moving image get the moving image's minimum (labels: 0).
    """
    if moving_labels is not None and not moving.same_grid(moving_labels, atol=1e-3):
        raise InputError(f"{moving_labels.path or 'moving labels'}: not on the grid of the moving image")
    reference = image_to_sitk(fixed.with_data(np.zeros(fixed.shape, np.uint8)))

    def carry(image: Image, interpolator: int, default: float) -> Image:
        resampled = sitk.Resample(image_to_sitk(image), reference, transform, interpolator, default)
        return fixed.with_data(sitk.GetArrayFromImage(resampled).transpose())

    image = carry(moving.with_data(moving.data.astype(np.float32)), sitk.sitkLinear, float(moving.data.min()))
    labels = None if moving_labels is None else carry(moving_labels, sitk.sitkNearestNeighbor, 0.0)
    landmarks = None if moving_landmarks is None else map_points_to_fixed(moving_landmarks, transform, moving, fixed)
    return Aligned(image=image, labels=labels, landmarks=landmarks, transform=transform)


def align_to_fixed(
    fixed: Image,
    moving: Image,
    moving_labels: Image | None = None,
    moving_landmarks: np.ndarray | None = None,
    transform: TransformKind = "affine",
    **settings: int | float | Sequence[int],
) -> Aligned:
    """:func:`affine_align` then :func:`apply_alignment` (``settings`` go to affine_align)."""
    estimated = affine_align(fixed, moving, transform, **settings)  # type: ignore[arg-type]
    return apply_alignment(estimated, fixed, moving, moving_labels, moving_landmarks)
