"""Rigid or affine pre-alignment of a moving image to a fixed one (SimpleITK).

Geometry: images are :class:`registration_core.core.io.Image` (array index order ``(i, j[, k])``,
affine voxel -> RAS+ mm); SimpleITK works in LPS mm. The estimated transform ``T`` maps a
physical point of the fixed image to the corresponding point of the moving image (ITK's
convention), so the aligned moving image is ``moving o T`` sampled on the fixed grid, and a
moving landmark ``p`` lands at ``T^-1(p)`` on the fixed grid (exact, no resampling).
2D and 3D images share one code path.

Initialisation (``init``): "moments" centres the transform on the images' centres of mass,
"geometry" on their geometric centres, and "search" runs an exhaustive search over rotation
and translation (rigid, from the "moments" start) at the coarsest pyramid level before the
gradient descent, so motions larger than the descent's capture range (tens of voxels, tens of
degrees) are recovered. ``mask: foreground`` restricts the metric to each image's eroded
foreground (intensity above 5 % of its range), so a field-of-view edge shared by both images
(the circular field of a fundus photograph) does not pin the alignment to the identity; it
is meant for such fields of view (a thresholded skull-stripped brain is too ragged: eroded,
little of it is left).
``features: gradient`` matches Gaussian gradient magnitudes (sigma one voxel) instead of
intensities: vessels and edges rather than a smooth illumination gradient drive the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jsonschema
import numpy as np
import SimpleITK as sitk

from registration_core.errors import InputError
from registration_core.core.io import Image, _lps_flip, image_to_sitk, ras_to_voxel, voxel_to_ras

TransformKind = Literal["rigid", "affine"]
InitKind = Literal["moments", "geometry", "search"]
MaskKind = Literal["none", "foreground"]
FeatureKind = Literal["intensity", "gradient"]
MAX_SEARCH_POSITIONS = 50_000
"""Largest number of transforms the exhaustive search may evaluate (bounds its run time)."""
FOREGROUND_FRACTION = 0.05
"""Foreground mask: voxels above ``min + FOREGROUND_FRACTION * (max - min)``."""

ALIGN_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "transform": {"enum": ["rigid", "affine"]},
        "shrink_factors": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "iterations": {"type": "integer", "minimum": 1},
        "sampling": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "bins": {"type": "integer", "minimum": 4},
        "seed": {"type": "integer", "minimum": 0},
        "init": {"enum": ["moments", "geometry", "search"]},
        "mask": {"enum": ["none", "foreground"]},
        "features": {"enum": ["intensity", "gradient"]},
        "search_shift": {"type": "number", "minimum": 0, "maximum": 1},
        "search_angle_deg": {"type": "number", "minimum": 0, "maximum": 180},
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


@dataclass(frozen=True)
class _Problem:
    """The images (float32, LPS), optional metric masks (uint8) and metric settings of one alignment."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: sitk.Image | None
    moving_mask: sitk.Image | None
    bins: int
    sampling: float
    seed: int
    name: str

    def method(self, shrink_factors: Sequence[int], sampling: float) -> sitk.ImageRegistrationMethod:
        """A registration method with the Mattes metric, masks, linear interpolation and the pyramid set."""
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.bins)
        if sampling < 1:
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(sampling, self.seed)
        if self.fixed_mask is not None:
            method.SetMetricFixedMask(self.fixed_mask)
            method.SetMetricMovingMask(self.moving_mask)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
        method.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in shrink_factors])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        return method

    def run(self, method: sitk.ImageRegistrationMethod) -> None:
        """Execute ``method``; ITK failures become InputError naming the moving image."""
        try:
            method.Execute(self.fixed, self.moving)
        except RuntimeError as exc:
            raise InputError(f"affine_align: registration of {self.name} failed ({exc})") from exc


def affine_align(
    fixed: Image,
    moving: Image,
    transform: TransformKind = "affine",
    shrink_factors: Sequence[int] = (4, 2, 1),
    iterations: int = 200,
    sampling: float = 0.25,
    bins: int = 32,
    seed: int = 0,
    init: InitKind = "moments",
    mask: MaskKind = "none",
    search_shift: float = 0.25,
    search_angle_deg: float = 20.0,
    features: FeatureKind = "intensity",
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
        init: "moments" (centres of mass), "geometry" (image centres) or "search" (exhaustive
            rigid search from the "moments" start, see :func:`_search`).
        mask: "none" or "foreground" (metric restricted to each image's foreground, eroded by
            twice the coarsest shrink factor in voxels; the metric images are zero outside it).
        search_shift: "search" only: translations tried, as a fraction of the fixed image's
            largest physical extent, each way along every axis (step: one coarsest-level voxel).
        search_angle_deg: "search" only: rotations tried about every axis, each way (degrees,
            step 5 degrees; a single rotation angle in 2D, three in 3D).
        features: "intensity" or "gradient" (Gaussian gradient magnitude, sigma one voxel).

    The transform is initialised as above, optimised as a rigid transform, then (for
    "affine") as an affine transform starting from it.
    """
    if fixed.ndim != moving.ndim:
        raise InputError(f"affine_align: fixed is {fixed.ndim}D but moving is {moving.ndim}D")
    if not 0 < sampling <= 1 or iterations < 1 or bins < 4 or not shrink_factors or min(shrink_factors) < 1:
        raise InputError(
            "affine_align: need 0 < sampling <= 1, iterations >= 1, bins >= 4 and shrink factors >= 1"
        )
    for key, value, allowed in [
        ("transform", transform, ("rigid", "affine")),
        ("init", init, ("moments", "geometry", "search")),
        ("mask", mask, ("none", "foreground")),
        ("features", features, ("intensity", "gradient")),
    ]:
        if value not in allowed:
            raise InputError(f"affine_align: {key} {value!r} is not allowed; allowed: {', '.join(allowed)}")
    fixed_itk, fixed_mask = _metric_image(fixed, features, mask, 2 * max(shrink_factors))
    moving_itk, moving_mask = _metric_image(moving, features, mask, 2 * max(shrink_factors))
    problem = _Problem(fixed_itk, moving_itk, fixed_mask, moving_mask, bins, sampling, seed, moving.path or "moving")
    ndim = fixed.ndim
    rigid = sitk.CenteredTransformInitializer(
        fixed_itk,
        moving_itk,
        sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if init == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    if init == "search":
        _search(problem, rigid, max(shrink_factors), search_shift, search_angle_deg)
    _optimise(problem, rigid, shrink_factors, iterations)
    if transform == "rigid":
        return rigid
    affine = sitk.AffineTransform(ndim)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _optimise(problem, affine, shrink_factors, iterations)
    return affine


def _metric_image(
    image: Image, features: FeatureKind, mask: MaskKind, erode_vox: int
) -> tuple[sitk.Image, sitk.Image | None]:
    """The float32 ITK image the metric compares (intensity or gradient magnitude) and its mask.

    With ``mask == "foreground"`` the image is zero outside the mask, so the mask's border
    (a field-of-view edge) leaves no gradient response inside it.
    """
    itk_image = sitk.Cast(image_to_sitk(image), sitk.sitkFloat32)
    features_image = (
        sitk.GradientMagnitudeRecursiveGaussian(itk_image, min(itk_image.GetSpacing()))
        if features == "gradient"
        else itk_image
    )
    if mask == "none":
        return features_image, None
    foreground = _foreground(itk_image, erode_vox)
    return sitk.Mask(features_image, foreground), foreground


def _foreground(image: sitk.Image, erode_vox: int) -> sitk.Image:
    """uint8 mask of voxels above 5 % of the intensity range, holes filled, eroded by ``erode_vox`` voxels (ball)."""
    array = sitk.GetArrayViewFromImage(image)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        raise InputError("affine_align: mask 'foreground' needs an image that is not constant")
    mask = sitk.BinaryFillhole(sitk.Cast(image > low + FOREGROUND_FRACTION * (high - low), sitk.sitkUInt8))
    eroded = sitk.BinaryErode(mask, [erode_vox] * image.GetDimension(), sitk.sitkBall)
    return eroded if sitk.GetArrayViewFromImage(eroded).any() else mask


def _search(problem: _Problem, rigid: sitk.Transform, shrink: int, shift: float, angle_deg: float) -> None:
    """Exhaustive search of ``rigid`` (Euler 2D/3D, in place) at shrink factor ``shrink``.

    Grid: rotations of -angle_deg..+angle_deg in 5 degree steps about every axis, and
    translations of -shift..+shift times the fixed image's largest extent (mm) in steps of one
    coarse voxel along every axis, around the current parameters. The best (lowest) Mattes
    value over the grid, computed on every coarse voxel, wins.
    """
    ndim = problem.fixed.GetDimension()
    spacing = max(problem.fixed.GetSpacing())
    extent = max(n * s for n, s in zip(problem.fixed.GetSize(), problem.fixed.GetSpacing()))
    shift_step = shrink * spacing
    angle_step = np.deg2rad(5.0)
    n_shift, n_angle = int(shift * extent / shift_step), int(angle_deg / 5.0)
    n_angles = 1 if ndim == 2 else 3
    steps = [n_angle] * n_angles + [n_shift] * ndim
    positions = int(np.prod([2 * n + 1 for n in steps]))
    if positions > MAX_SEARCH_POSITIONS:
        raise InputError(
            f"affine_align: search_shift/search_angle_deg give {positions} search positions; "
            f"at most {MAX_SEARCH_POSITIONS} are allowed (lower them or raise the shrink factor)"
        )
    method = problem.method([shrink], 1.0)
    method.SetOptimizerAsExhaustive(steps, stepLength=1.0)
    method.SetOptimizerScales([angle_step] * n_angles + [shift_step] * ndim)
    best: list = [np.inf, None]

    def record() -> None:
        value = method.GetMetricValue()
        if value < best[0]:
            best[:] = [value, method.GetOptimizerPosition()]

    method.AddCommand(sitk.sitkIterationEvent, record)
    start = rigid.GetParameters()
    method.SetInitialTransform(rigid, inPlace=True)
    problem.run(method)
    rigid.SetParameters(start if best[1] is None else best[1])


def _optimise(
    problem: _Problem, initial: sitk.Transform, shrink_factors: Sequence[int], iterations: int
) -> None:
    """Optimise ``initial`` in place: Mattes MI, regular-step gradient descent over a smoothed pyramid."""
    method = problem.method(shrink_factors, problem.sampling)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=True)
    problem.run(method)


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
