"""Rigid or affine registration of a moving image to a fixed one (SimpleITK): the one affine
implementation, behind the pre-alignment (a dataset's ``align``, the ``affine_align``
preprocessing step) and the ``affine`` registration method. Its settings are :data:`ALIGN_PARAMS`.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from registration_core.core.io import Image, _lps_flip, image_to_sitk, ras_to_voxel, voxel_to_ras
from registration_core.core.params import Param, parse_params
from registration_core.errors import InputError

MaskKind = Literal["none", "foreground"]
FeatureKind = Literal["intensity", "gradient"]
MAX_SEARCH_POSITIONS = 50_000
"""Largest number of transforms the exhaustive search may evaluate (bounds its run time)."""
FOREGROUND_FRACTION = 0.05
"""Foreground mask: voxels above ``min + FOREGROUND_FRACTION * (max - min)``."""

METRICS = ("mattes_mi", "correlation", "mean_squares")
Observer = Callable[[float, int], None]
"""Called at every gradient-descent iteration with the metric value (lower is better) and the pyramid level."""

ALIGN_PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("transform", str, "affine", "rigid (rotation + translation) or affine (rigid first, then affine from it)",
              choices=("rigid", "affine")),
        Param("shrink_factors", list, (4, 2, 1), "multi-resolution pyramid, coarse to fine (voxels); Gaussian sigma "
              "half the factor (voxels, 0 at factor 1)", item=int, minimum=1),
        Param("iterations", int, 200, "gradient-descent iterations per level and stage (at most)", minimum=1),
        Param("metric", str, "mattes_mi", "similarity metric (Mattes mutual information, correlation, mean squares)",
              choices=METRICS),
        Param("sampling", float, 0.25, "fraction of fixed voxels sampled (random, seeded) for the metric",
              minimum=0.0, maximum=1.0, exclusive_minimum=True),
        Param("bins", int, 32, "histogram bins of the Mattes metric", minimum=4),
        Param("seed", int, 0, "seed of the metric's voxel sampling (ITK receives seed + 1: its 0 means the clock)",
              minimum=0),
        Param("init", str, "moments", "start: centres of mass (moments), image centres (geometry), or an exhaustive "
              "rigid search from the moments start (search)", choices=("moments", "geometry", "search")),
        Param("mask", str, "none", "none, or foreground: the metric inside each image's eroded foreground",
              choices=("none", "foreground")),
        Param("features", str, "intensity", "intensity, or gradient: Gaussian gradient magnitudes (sigma one voxel)",
              choices=("intensity", "gradient")),
        Param("search_shift", float, 0.25, "search: translations tried each way, a fraction of the fixed image's "
              "largest extent", minimum=0.0, maximum=1.0),
        Param("search_angle_deg", float, 20.0, "search: rotations tried about every axis, each way (degrees)",
              minimum=0.0, maximum=180.0),
    ]
}
"""The settings of :func:`affine_align` (all optional): the ``align`` settings of a dataset, the
``affine_align`` preprocessing step and the ``affine`` registration method."""


def check_align_settings(settings: dict) -> dict:
    """Validate alignment settings against :data:`ALIGN_PARAMS` and return them as given;
    InputError names the setting and what is allowed."""
    parse_params("affine_align", ALIGN_PARAMS, settings, kind="setting")
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
    metric: str
    bins: int
    sampling: float
    seed: int
    name: str
    observer: Observer | None = None

    def method(self, shrink_factors: Sequence[int], sampling: float) -> sitk.ImageRegistrationMethod:
        """A registration method with the metric, masks, linear interpolation and the pyramid set."""
        method = sitk.ImageRegistrationMethod()
        if self.metric == "mattes_mi":
            method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.bins)
        elif self.metric == "correlation":
            method.SetMetricAsCorrelation()
        else:
            method.SetMetricAsMeanSquares()
        if sampling < 1:
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(sampling, self.seed + 1)
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


def affine_align(fixed: Image, moving: Image, observer: Observer | None = None, **settings: Any) -> sitk.Transform:
    """Estimate ``T`` (fixed LPS mm -> moving LPS mm) maximising the similarity ``metric``.

    Regular-step gradient descent (steps in mm of physical shift, from 1 down to 1e-4).

    Args:
        fixed, moving: 2D or 3D intensity images of the same dimension (any grids).
        observer: called at every gradient-descent iteration (see :data:`Observer`).
        settings: :data:`ALIGN_PARAMS` (checked; InputError names a bad one): ``transform``
            "rigid" or "affine"; ``shrink_factors`` (coarse to fine; smoothing sigma half the
            factor, voxels); ``iterations`` per level and stage; ``metric``, ``bins``,
            ``sampling`` (fraction in (0, 1]) and its ``seed`` (with more than one ITK thread the
            metric's parallel sums can still change the result slightly between runs);
            ``init`` "moments" | "geometry" | "search" (exhaustive rigid search from the
            "moments" start within ``search_shift`` / ``search_angle_deg``, see :func:`_search`);
            ``mask`` "none" | "foreground" (metric restricted to each image's foreground, eroded
            by twice the coarsest shrink factor in voxels; the metric images are zero outside
            it); ``features`` "intensity" | "gradient" (Gaussian gradient magnitude, sigma one voxel).

    The transform is initialised as above, optimised as a rigid transform, then (for
    "affine") as an affine transform starting from it.
    """
    s = parse_params("affine_align", ALIGN_PARAMS, settings, kind="setting")
    if fixed.ndim != moving.ndim:
        raise InputError(f"affine_align: fixed is {fixed.ndim}D but moving is {moving.ndim}D")
    shrink_factors = s["shrink_factors"]
    fixed_itk, fixed_mask = _metric_image(fixed, s["features"], s["mask"], 2 * max(shrink_factors))
    moving_itk, moving_mask = _metric_image(moving, s["features"], s["mask"], 2 * max(shrink_factors))
    problem = _Problem(fixed_itk, moving_itk, fixed_mask, moving_mask, s["metric"], s["bins"], s["sampling"], s["seed"],
                       moving.path or "moving", observer)
    ndim = fixed.ndim
    rigid = sitk.CenteredTransformInitializer(
        fixed_itk,
        moving_itk,
        sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY
        if s["init"] == "geometry"
        else sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    if s["init"] == "search":
        _search(problem, rigid, max(shrink_factors), s["search_shift"], s["search_angle_deg"])
    _optimise(problem, rigid, shrink_factors, s["iterations"])
    if s["transform"] == "rigid":
        return rigid
    affine = sitk.AffineTransform(ndim)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _optimise(problem, affine, shrink_factors, s["iterations"])
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
    coarse voxel along every axis, around the current parameters. The best (lowest) metric
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
    """Optimise ``initial`` in place: regular-step gradient descent over a smoothed pyramid."""
    method = problem.method(shrink_factors, problem.sampling)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=True)
    if problem.observer is not None:
        observer = problem.observer
        method.AddCommand(sitk.sitkIterationEvent, lambda: observer(method.GetMetricValue(), method.GetCurrentLevel()))
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
    **settings: Any,
) -> Aligned:
    """:func:`affine_align` then :func:`apply_alignment` (``settings``: :data:`ALIGN_PARAMS`)."""
    estimated = affine_align(fixed, moving, **settings)
    return apply_alignment(estimated, fixed, moving, moving_labels, moving_landmarks)
