"""B-spline free-form deformation with SimpleITK's ImageRegistrationMethod, 2D and 3D.

A cubic B-spline transform over the fixed image's domain (``BSplineTransformInitializer``) is
optimised with L-BFGS or regular-step gradient descent on Mattes mutual information, correlation or mean
squares (seeded random sampling) over a multi-resolution pyramid: level ``l`` uses the images
shrunk by ``shrink_factors[l]`` (smoothed by ``smoothing_sigmas[l]`` mm) and a control grid
refined by ``grid_scale_factors[l]``. ``control_spacing_mm`` is the control-point spacing of
the finest level: the initial mesh has ``round(extent / (control_spacing_mm * last_scale))``
cells per axis (at least one). There is no bending-energy term (ImageRegistrationMethod has
none): folding is measured by the Jacobian statistics. L-BFGS-B is not offered: ITK's
LBFGSBOptimizerv4 keeps the first level's parameter count and fails when the control grid is
refined. The transform ``T`` (fixed physical point -> moving point) is returned as ``disp_vox = T(x) - x`` in voxels of the fixed grid.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from registration_core.errors import InputError
from registration_core.core.io import Image
from registration_core.core.params import Param
from registration_core.methods import RegistrationResult
from registration_core.methods._sitk import (
    PyramidMethod, as_sitk_float, check_grid_size, configure_metric, configure_pyramid, execute, metric_params,
    parse_list, pyramid_params, schedule,
)

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("control_spacing_mm", float, 10.0, "control-point spacing of the finest level, mm",
              minimum=0.0, exclusive_minimum=True),
        Param("grid_scale_factors", str, "1x2x4", "control-grid refinement per level relative to the first (e.g. 1x2x4)"),
        *pyramid_params("4x2x1", "2x1x0"),
        # 32 bins: ITK's Mattes derivative holds bins x bins x (all B-spline parameters) per thread
        *metric_params("mattes_mi", 0.25, 32),
        Param("optimizer", str, "lbfgs", "lbfgs (L-BFGS, libLBFGS) or gradient_descent (regular step)",
              choices=("lbfgs", "gradient_descent")),
        Param("iterations", int, 40, "optimizer iterations per level (at most)", minimum=1),
        Param("max_step_mm", float, 1.0, "gradient_descent: first step as the largest control-point shift in mm",
              minimum=0.0, exclusive_minimum=True),
    ]
}


def _grid_scales(owner: str, params: Mapping[str, Any]) -> tuple[int, ...]:
    """Control-grid scale factors, one per pyramid level."""
    scales = parse_list(owner, "grid_scale_factors", params["grid_scale_factors"], int, 1)
    levels = len(schedule(owner, params)[0])
    if len(scales) != levels:
        raise InputError(
            f"{owner}: parameter 'grid_scale_factors' has {len(scales)} values but 'shrink_factors' has {levels} levels"
        )
    return scales


def _mesh_size(fixed: sitk.Image, spacing_mm: float, last_scale: int) -> list[int]:
    """Initial mesh cells per axis so that the finest level's control spacing is about ``spacing_mm``."""
    extent = (np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing())
    return [max(1, int(round(e / (spacing_mm * last_scale)))) for e in extent]


class BSpline(PyramidMethod):
    """SimpleITK B-spline FFD; see the module docstring."""

    name = "bspline"
    params = PARAMS
    uses_torch = False

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        values = super().resolve_params(raw)
        _grid_scales(f"method '{self.name}'", values)
        return values

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        owner = f"method '{self.name}'"
        check_grid_size(owner, fixed, schedule(owner, params)[0])
        scales = _grid_scales(owner, params)
        fixed_itk, moving_itk = as_sitk_float(fixed), as_sitk_float(moving)
        initial = sitk.BSplineTransformInitializer(
            fixed_itk, _mesh_size(fixed_itk, params["control_spacing_mm"], scales[-1]), order=3
        )
        method = sitk.ImageRegistrationMethod()
        configure_metric(method, params)
        configure_pyramid(method, owner, params)
        if params["optimizer"] == "lbfgs":
            method.SetOptimizerAsLBFGS2(
                solutionAccuracy=1e-5, numberOfIterations=params["iterations"], deltaConvergenceTolerance=1e-4,
            )
        else:
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=params["max_step_mm"], minStep=1e-3, numberOfIterations=params["iterations"],
                relaxationFactor=0.5,
            )
        # unit scales: every B-spline parameter is a control-point shift in mm (estimating scales
        # from physical shifts costs one metric evaluation per parameter)
        method.SetInitialTransformAsBSpline(initial, inPlace=True, scaleFactors=list(scales))
        mesh_final = [int(n * scales[-1]) for n in initial.GetTransformDomainMeshSize()]
        return execute(method, fixed_itk, moving_itk, params, control_mesh_final=mesh_final)

METHOD = BSpline()
