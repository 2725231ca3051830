"""SimpleITK plumbing shared by the classical methods (``affine``, ``demons``, ``bspline``); no torch.

Conventions
-----------
* :func:`registration_core.core.io.image_to_sitk` gives ITK images whose index ``(x, y[, z])`` is our
  array index ``(i, j[, k])`` and whose physical space is LPS mm.
* A transform ``T`` estimated by ``sitk.ImageRegistrationMethod`` with the atlas as the *fixed*
  image maps a fixed physical point ``p`` to the moving point ``T(p)``; ITK demons return a field
  ``d`` with ``warped(p) = moving(p + d(p))``. Both are our convention; their displacement
  ``d(p)`` (LPS mm) becomes ``disp_vox = (D diag(s))^-1 d(p)`` (D: direction, s: spacing), i.e.
  voxels of the fixed grid, channel d along array axis d.
* Multi-resolution schedules are list parameters (:class:`registration_core.core.params.Param`
  of type ``list``) with one value per level, coarse to fine: YAML lists (``[4, 2, 1]``) or text
  separated by ``x`` as in ANTs (``"4x2x1"``; grid folder names allow no commas) or by commas.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import SimpleITK as sitk

from registration_core.core.io import Image, image_to_sitk
from registration_core.core.params import Param
from registration_core.core.progress import report
from registration_core.errors import InputError
from registration_core.methods import RegistrationResult

METRICS = ("mattes_mi", "correlation", "mean_squares")


def as_sitk_float(image: Image) -> sitk.Image:
    """An :class:`Image` as a float32 SimpleITK image (LPS geometry; 2D: its in-plane block)."""
    return sitk.Cast(image_to_sitk(image), sitk.sitkFloat32)


def field_to_disp_vox(field: sitk.Image) -> np.ndarray:
    """ITK displacement field (vector image, LPS mm) -> disp_vox (ndim, *spatial) float32 voxels of its grid."""
    ndim = field.GetDimension()
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)  # (*reversed spatial, ndim)
    disp_lps = np.moveaxis(vectors.transpose(*reversed(range(ndim)), ndim), -1, 0)
    index_to_lps = np.asarray(field.GetDirection()).reshape(ndim, ndim) @ np.diag(field.GetSpacing())
    return np.einsum("rc,c...->r...", np.linalg.inv(index_to_lps), disp_lps).astype(np.float32)


def transform_to_disp_vox(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """Displacement ``T(p) - p`` of an ITK transform sampled on ``reference``'s grid -> disp_vox (ndim, *spatial)."""
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection(),
    )
    return field_to_disp_vox(field)


def parse_list(owner: str, name: str, raw: Any, kind: type, minimum: float) -> tuple[Any, ...]:
    """Parse ``"4x2x1"`` (or ``"4,2,1"``, ``[4, 2, 1]``, one number) into a tuple of ``kind`` values >= ``minimum``
    (a ``list`` :class:`Param` for parameters not declared as one)."""
    return Param(name, list, None, "", item=kind, minimum=minimum).parse(raw, owner)


def pyramid_params(shrink: tuple[int, ...], sigmas: tuple[float, ...]) -> list[Param]:
    """The multi-resolution parameters (lists, coarse to fine) with the given defaults."""
    return [
        Param("shrink_factors", list, shrink, "downsampling factor per level, coarse to fine (e.g. 4x2x1)",
              item=int, minimum=1),
        Param("smoothing_sigmas", list, sigmas, "Gaussian sigma in mm per level before downsampling (e.g. 2x1x0)",
              item=float, minimum=0.0, length_of="shrink_factors"),
    ]


def metric_params(metric: str, sampling: float, bins: int) -> list[Param]:
    """Similarity metric, histogram bins, random sampling fraction and its seed."""
    return [
        Param("metric", str, metric, "similarity metric", choices=METRICS),
        Param("histogram_bins", int, bins, "Mattes mutual information histogram bins", minimum=4),
        Param("sampling_percentage", float, sampling, "fraction of voxels sampled per iteration (1: all, dense)",
              minimum=0.0, maximum=1.0, exclusive_minimum=True),
        Param("seed", int, 0, "seed of the random sampling (ITK receives seed + 1: its 0 means the clock)", minimum=0),
        Param("threads", int, 1, "ITK threads of the optimisation: 1 repeats exactly run to run; "
              "0 uses every core (faster, the metric's parallel sums then vary in the last digits)", minimum=0),
    ]


class IterationLog:
    """Per-iteration optimiser metric: ``{"iteration", "elapsed_s", "total", "level"}`` dicts.

    ``iteration`` counts over all levels from 0; ``total`` is the value the optimiser reported at
    that iteration (for ImageRegistrationMethod: at the position before the step; lower is better
    for every metric ITK optimises); ``level`` is the pyramid level (0 = coarsest).
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._start = time.perf_counter()

    def add(self, total: float, level: int) -> None:
        self.records.append({
            "iteration": len(self.records), "elapsed_s": time.perf_counter() - self._start,
            "total": float(total), "level": level,
        })
        report(len(self.records), total=float(total), level=level)


@contextmanager
def itk_threads(threads: int) -> Iterator[None]:
    """Run ITK with ``threads`` threads (0: leave ITK's default), restoring the global default after.

    The registration method's own thread setting does not reach its pyramid filters and metric
    internals; only the global default makes sampled-metric optimisations repeat exactly.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads > 0:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def configure_metric(method: sitk.ImageRegistrationMethod, params: Mapping[str, Any]) -> None:
    """Set the metric, linear interpolation and (seeded) random sampling of ``method`` from ``params``."""
    if params["metric"] == "mattes_mi":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params["histogram_bins"])
    elif params["metric"] == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMeanSquares()
    if params["sampling_percentage"] < 1.0:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(params["sampling_percentage"], params["seed"] + 1)
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)


def configure_pyramid(method: sitk.ImageRegistrationMethod, params: Mapping[str, Any]) -> None:
    """Shrink factors and smoothing sigmas (mm) per level of ``method``."""
    method.SetShrinkFactorsPerLevel(list(params["shrink_factors"]))
    method.SetSmoothingSigmasPerLevel(list(params["smoothing_sigmas"]))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()


def record_iterations(method: sitk.ImageRegistrationMethod) -> IterationLog:
    """Attach an :class:`IterationLog` to ``method``'s iteration events."""
    log = IterationLog()
    method.AddCommand(sitk.sitkIterationEvent, lambda: log.add(method.GetMetricValue(), method.GetCurrentLevel()))
    return log


def check_grid_size(owner: str, image: Image, shrink: tuple[int, ...]) -> None:
    """InputError when the coarsest level would have fewer than 4 voxels along an axis."""
    coarsest = [n // max(shrink) for n in image.shape]
    if min(coarsest) < 4:
        raise InputError(
            f"{owner}: shrink factor {max(shrink)} leaves {coarsest} voxels at the coarsest level of an image of "
            f"shape {image.shape}; use smaller 'shrink_factors'"
        )


def execute(
    method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, params: Mapping[str, Any],
    **extra: Any,
) -> RegistrationResult:
    """Run a configured ``ImageRegistrationMethod`` (with ``params['threads']``) into a RegistrationResult.

    The optimiser's final transform at the finest level is returned (no selection); ``extra`` goes to
    the log together with the optimiser's stop condition.
    """
    history = record_iterations(method)
    with itk_threads(params["threads"]):
        transform = method.Execute(fixed, moving)
    return RegistrationResult(
        disp_vox=transform_to_disp_vox(transform, fixed),
        loss_history=history.records,
        best_iteration=None,
        best_criterion="the optimiser's final transform at the finest level (no selection)",
        device="cpu",
        extra={"stop_condition": method.GetOptimizerStopConditionDescription(), **extra},
    )
