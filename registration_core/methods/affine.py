"""Affine (or rigid) registration as a method: :func:`registration_core.preprocessing.align.affine_align`,
the pre-alignment's implementation, with its settings (:data:`ALIGN_PARAMS`: ``transform``,
``shrink_factors`` ``[4, 2, 1]``, ``iterations``, ``metric``, ``sampling``, ``bins``, ``seed``,
``init``, ``mask``, ``features``, ``search_*``) and ``threads``, 2D and 3D.

The estimated transform ``T`` (fixed physical point -> moving physical point) is returned as a
dense ``disp_vox`` (ndim, *spatial) in voxels of the fixed grid: ``u(x) = T(x) - x``, so
``warped = moving o (id + u)``. ``loss_history`` holds the metric at every gradient-descent
iteration of the rigid stage, then of the affine stage (``level``: the pyramid level of the stage).
"""

from __future__ import annotations

from typing import Any, Mapping

from registration_core.core.io import Image
from registration_core.core.params import Param
from registration_core.methods import Method, RegistrationResult
from registration_core.methods._sitk import IterationLog, as_sitk_float, check_grid_size, itk_threads, transform_to_disp_vox
from registration_core.preprocessing.align import ALIGN_PARAMS, affine_align

PARAMS: dict[str, Param] = {
    **ALIGN_PARAMS,
    "threads": Param("threads", int, 1, "ITK threads: 1 repeats exactly run to run; 0 uses every core (faster, the "
                     "metric's parallel sums then vary in the last digits)", minimum=0),
}


class Affine(Method):
    """SimpleITK rigid/affine registration; see the module docstring."""

    name = "affine"
    params = PARAMS
    uses_torch = False

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        check_grid_size(f"method '{self.name}'", fixed, params["shrink_factors"])
        history = IterationLog()
        settings = {key: value for key, value in params.items() if key in ALIGN_PARAMS}
        with itk_threads(params["threads"]):
            transform = affine_align(fixed, moving, observer=history.add, **settings)
        return RegistrationResult(
            disp_vox=transform_to_disp_vox(transform, as_sitk_float(fixed)),
            loss_history=history.records,
            best_iteration=None,
            best_criterion="the optimiser's final transform at the finest level (no selection)",
            device="cpu",
            extra={"transform": transform.GetName(), "transform_parameters": list(transform.GetParameters())},
        )


METHOD = Affine()
