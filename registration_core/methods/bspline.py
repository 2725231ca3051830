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

from registration_core.core.io import Image
from registration_core.core.params import Param
from registration_core.methods import Method, RegistrationResult
from registration_core.methods._sitk import (
    as_sitk_float,
    check_grid_size,
    configure_metric,
    configure_pyramid,
    execute,
    metric_params,
    pyramid_params,
)

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("control_spacing_mm", float, 10.0, "control-point spacing of the finest level, mm",
              minimum=0.0, exclusive_minimum=True),
        Param("grid_scale_factors", list, (1, 2, 4), "control-grid refinement per level relative to the first (e.g. 1x2x4)",
              item=int, minimum=1, length_of="shrink_factors"),
        *pyramid_params((4, 2, 1), (2.0, 1.0, 0.0)),
        # 32 bins: ITK's Mattes derivative holds bins x bins x (all B-spline parameters) per thread
        *metric_params("mattes_mi", 0.25, 32),
        Param("optimizer", str, "lbfgs", "lbfgs (L-BFGS, libLBFGS) or gradient_descent (regular step)",
              choices=("lbfgs", "gradient_descent")),
        Param("iterations", int, 40, "optimizer iterations per level (at most)", minimum=1),
        Param("max_step_mm", float, 1.0, "gradient_descent: first step as the largest control-point shift in mm",
              minimum=0.0, exclusive_minimum=True),
    ]
}


def _mesh_size(fixed: sitk.Image, spacing_mm: float, last_scale: int) -> list[int]:
    """Initial mesh cells per axis so that the finest level's control spacing is about ``spacing_mm``."""
    extent = (np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing())
    return [max(1, int(round(e / (spacing_mm * last_scale)))) for e in extent]


class BSpline(Method):
    """SimpleITK B-spline FFD; see the module docstring."""

    name = "bspline"
    params = PARAMS
    uses_torch = False

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        check_grid_size(f"method '{self.name}'", fixed, params["shrink_factors"])
        scales = params["grid_scale_factors"]
        fixed_itk, moving_itk = as_sitk_float(fixed), as_sitk_float(moving)
        initial = sitk.BSplineTransformInitializer(
            fixed_itk, _mesh_size(fixed_itk, params["control_spacing_mm"], scales[-1]), order=3
        )
        method = sitk.ImageRegistrationMethod()
        configure_metric(method, params)
        configure_pyramid(method, params)
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
