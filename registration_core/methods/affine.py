"""Affine (or rigid) registration with SimpleITK's ImageRegistrationMethod, 2D and 3D.

A centred transform (centre of rotation at the fixed image's centre, translation initialised
by aligning image centres or centres of mass) is optimised by regular-step gradient descent
with scales from physical shifts (steps in mm), over a multi-resolution pyramid (shrink factors, Gaussian sigmas in mm),
on Mattes mutual information, correlation or mean squares with seeded random sampling. The
result is returned as a dense ``disp_vox`` (ndim, *spatial) in voxels of the fixed grid:
``u(x) = T(x) - x``, so ``warped = moving o (id + u)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import SimpleITK as sitk

from registration_core.core.io import Image
from registration_core.core.params import Param
from registration_core.methods import RegistrationResult
from registration_core.methods._sitk import (
    PyramidMethod, as_sitk_float, check_grid_size, configure_metric, configure_pyramid, execute, metric_params,
    pyramid_params, schedule,
)

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("transform", str, "affine", "rigid (rotation + translation) or affine", choices=("rigid", "affine")),
        Param("init", str, "moments", "initial translation: align image centres (geometry) or centres of mass (moments)",
              choices=("geometry", "moments")),
        *pyramid_params("4x2x1", "2x1x0"),
        *metric_params("mattes_mi", 0.25, 50),
        Param("iterations", int, 200, "gradient descent iterations per level (at most)", minimum=1),
        Param("max_step_mm", float, 2.0, "first step: largest voxel shift it causes, in mm (halved on each reversal)",
              minimum=0.0, exclusive_minimum=True),
        Param("min_step_mm", float, 1e-3, "a level stops when the step falls below this (mm)",
              minimum=0.0, exclusive_minimum=True),
    ]
}


def _transform(fixed: sitk.Image, moving: sitk.Image, params: Mapping[str, Any]) -> sitk.Transform:
    """The initial centred rigid/affine transform (fixed physical point -> moving physical point)."""
    ndim = fixed.GetDimension()
    if params["transform"] == "affine":
        base: sitk.Transform = sitk.AffineTransform(ndim)
    else:
        base = sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform()
    mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if params["init"] == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return sitk.CenteredTransformInitializer(fixed, moving, base, mode)


class Affine(PyramidMethod):
    """SimpleITK rigid/affine registration; see the module docstring."""

    name = "affine"
    params = PARAMS
    uses_torch = False

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        owner = f"method '{self.name}'"
        check_grid_size(owner, fixed, schedule(owner, params)[0])
        fixed_itk, moving_itk = as_sitk_float(fixed), as_sitk_float(moving)
        method = sitk.ImageRegistrationMethod()
        configure_metric(method, params)
        configure_pyramid(method, owner, params)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=params["max_step_mm"], minStep=params["min_step_mm"],
            numberOfIterations=params["iterations"], relaxationFactor=0.5,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(_transform(fixed_itk, moving_itk, params), inPlace=False)
        return execute(method, fixed_itk, moving_itk, params)

METHOD = Affine()
