"""Multi-resolution demons with SimpleITK (diffeomorphic or symmetric-forces), 2D and 3D.

Optionally the moving intensities are histogram-matched to the fixed image. A pyramid is built
over ``shrink_factors`` (each level Gaussian-smoothed with ``smoothing_sigmas`` in mm, then
subsampled); each level runs ``iterations`` demons iterations starting from the previous
level's field resampled (linearly, in mm) onto its grid. After every iteration the displacement
field is smoothed with a Gaussian of ``field_sigma`` and, when ``update_sigma`` > 0, each update
first with ``update_sigma`` (both in voxels of the level's grid, ITK's convention, so the
physical smoothing grows at coarse levels). The demons field ``d`` satisfies
``warped(p) = moving(p + d(p))``; it is returned as ``disp_vox`` (ndim, *spatial) in voxels of
the fixed grid. ``loss_history`` holds the filter's mean squared intensity difference per
iteration (at that level's resolution).
"""

from __future__ import annotations

from typing import Any, Mapping

import SimpleITK as sitk

from registration_core.core.io import Image
from registration_core.core.params import Param
from registration_core.methods import Method, RegistrationResult
from registration_core.methods._sitk import IterationLog, as_sitk_float, check_grid_size, field_to_disp_vox, pyramid_params

_FILTERS = {
    "diffeomorphic": sitk.DiffeomorphicDemonsRegistrationFilter,
    # ITK's FastSymmetricForces (Vercauteren et al.) with a bounded step; the older
    # SymmetricForcesDemonsRegistrationFilter has no step bound and diverged on brain slices.
    "symmetric": sitk.FastSymmetricForcesDemonsRegistrationFilter,
}

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("variant", str, "diffeomorphic", "demons variant", choices=tuple(_FILTERS)),
        *pyramid_params((4, 2, 1), (2.0, 1.0, 0.0)),
        Param("iterations", list, (100,), "demons iterations per level: one number for every level or one per level "
              "(e.g. 200x100x50)", item=int, minimum=1, length_of="shrink_factors", length_rule="equal_or_one"),
        Param("field_sigma", float, 1.5, "Gaussian sigma smoothing the displacement field, voxels of each level (0: off)", minimum=0.0),
        Param("update_sigma", float, 0.0, "Gaussian sigma smoothing each update (fluid-like), voxels of each level (0: off)", minimum=0.0),
        Param("max_step", float, 2.0, "largest update per iteration, in voxels of the level",
              minimum=0.0, exclusive_minimum=True),
        Param("histogram_matching", bool, True, "match the moving image's histogram to the fixed image first"),
    ]
}


def _level_image(image: sitk.Image, shrink: int, sigma_mm: float) -> sitk.Image:
    """``image`` Gaussian-smoothed (sigma in mm) and subsampled by ``shrink`` along every axis."""
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image
    return sitk.Shrink(smoothed, [shrink] * image.GetDimension()) if shrink > 1 else smoothed


def _resample_field(field: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A displacement field (mm) resampled linearly onto ``reference``'s grid (nearest value outside)."""
    return sitk.Resample(field, reference, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID(), True)


def _demons_filter(params: Mapping[str, Any], iterations: int) -> sitk.ImageFilter:
    """The configured demons filter for one level."""
    demons = _FILTERS[params["variant"]]()
    demons.SetNumberOfIterations(iterations)
    demons.SetSmoothDisplacementField(params["field_sigma"] > 0)
    if params["field_sigma"] > 0:
        demons.SetStandardDeviations(params["field_sigma"])
    demons.SetSmoothUpdateField(params["update_sigma"] > 0)
    if params["update_sigma"] > 0:
        demons.SetUpdateFieldStandardDeviations(params["update_sigma"])
    demons.SetMaximumUpdateStepLength(params["max_step"])
    return demons


class Demons(Method):
    """SimpleITK multi-resolution demons; see the module docstring."""

    name = "demons"
    params = PARAMS
    uses_torch = False

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        shrink, sigmas = params["shrink_factors"], params["smoothing_sigmas"]
        check_grid_size(f"method '{self.name}'", fixed, shrink)
        iterations = params["iterations"] * len(shrink) if len(params["iterations"]) == 1 else params["iterations"]
        fixed_itk, moving_itk = as_sitk_float(fixed), as_sitk_float(moving)
        if params["histogram_matching"]:
            moving_itk = sitk.HistogramMatching(moving_itk, fixed_itk, 1024, 7, True)
        history = IterationLog()
        field: sitk.Image | None = None
        for level, (factor, sigma, n_iter) in enumerate(zip(shrink, sigmas, iterations)):
            fixed_level = _level_image(fixed_itk, factor, sigma)
            moving_level = _level_image(moving_itk, factor, sigma)
            demons = _demons_filter(params, n_iter)
            demons.AddCommand(sitk.sitkIterationEvent, lambda d=demons, lv=level: history.add(d.GetMetric(), lv))
            if field is None:
                field = demons.Execute(fixed_level, moving_level)
            else:
                field = demons.Execute(fixed_level, moving_level, _resample_field(field, fixed_level))
        assert field is not None
        return RegistrationResult(
            disp_vox=field_to_disp_vox(_resample_field(field, fixed_itk)),
            loss_history=history.records,
            best_iteration=None,
            best_criterion="the field after the last iteration of the finest level (no selection)",
            device="cpu",
        )


METHOD = Demons()
