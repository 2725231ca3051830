"""elastix B-spline registration through itk-elastix (``pip install -e .[elastix]``), 2D and 3D.

The parameter map starts from elastix's own default B-spline map
(``ParameterObject.GetDefaultParameterMap("bspline")``: Mattes MI + bending energy, weights 1 and
1, final grid spacing 10 mm, 4 resolutions, adaptive stochastic gradient descent with 256
iterations, 2048 random samples per iteration) and sets the exposed entries on it; with
``affine_stage`` the default affine map (the same metric, optimiser, sampling and pyramid) runs
first and the B-spline stage starts from its result. Presets:

* ``default``: the default map unchanged (``itk.elastix_registration_method`` with it is elastix's
  baseline);
* ``multiresolution``: a deeper pyramid and a finer final grid (6 resolutions, 5 mm, 500
  iterations, 4096 samples), with affine pre-alignment.

Conventions: images go to elastix as ITK images in LPS physical space (:func:`itk_geometry`).
The estimated transform ``T`` maps a fixed physical point ``p`` to the moving point ``T(p)``;
``itk.transformix_deformation_field`` samples ``d(p) = T(p) - p`` (LPS mm) on the fixed grid, our
convention, which becomes ``disp_vox = (D diag(s))^-1 d`` (voxels of the fixed grid). Warping by
``disp_vox`` equals transformix's own resampling (tests/methods/test_elastix.py).

Repeats: ``threads`` is elastix's ``number_of_threads``; ``seed`` becomes ``RandomSeed`` of every
map (seed + 1: elastix's image samplers share ITK's random generator, reseeded per run from it).
One thread and a fixed seed repeat exactly.
"""

from __future__ import annotations

import tempfile
import time
from importlib import metadata
from typing import Any, Mapping

import numpy as np

from registration_core.core.io import Image, itk_geometry
from registration_core.core.outputs import signals_end_the_process
from registration_core.core.params import Param
from registration_core.errors import InputError
from registration_core.methods import Method, RegistrationResult

METRICS = ("AdvancedMattesMutualInformation", "AdvancedNormalizedCorrelation", "AdvancedMeanSquares")

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("preset", str, "default", "default: elastix's default B-spline map; multiresolution: 6 levels, 5 mm",
              choices=("default", "multiresolution")),
        Param("final_grid_spacing_mm", float, 10.0, "B-spline control-point spacing at the finest level, mm",
              minimum=0.0, exclusive_minimum=True),
        Param("resolutions", int, 4, "pyramid levels (the control grid halves its spacing ratio per level)",
              minimum=1, maximum=8),
        Param("iterations", int, 256, "optimizer iterations per resolution", minimum=1),
        Param("metric", str, "AdvancedMattesMutualInformation", "similarity metric", choices=METRICS),
        Param("bending_weight", float, 1.0, "weight of TransformBendingEnergyPenalty (the similarity has "
              "weight 1; 0 turns the penalty off)", minimum=0.0),
        Param("samples", int, 2048, "random spatial samples per iteration (NumberOfSpatialSamples)", minimum=16),
        Param("affine_stage", bool, False, "run elastix's default affine map first"),
        Param("threads", int, 1, "elastix threads: 1 repeats exactly; 0 uses every core", minimum=0),
        Param("seed", int, 0, "RandomSeed of the samplers (elastix receives seed + 1)", minimum=0),
    ]
}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {"final_grid_spacing_mm": 10.0, "resolutions": 4, "iterations": 256,
                "metric": "AdvancedMattesMutualInformation", "bending_weight": 1.0, "samples": 2048,
                "affine_stage": False},
    "multiresolution": {"final_grid_spacing_mm": 5.0, "resolutions": 6, "iterations": 500,
                        "metric": "AdvancedMattesMutualInformation", "bending_weight": 1.0, "samples": 4096,
                        "affine_stage": True},
}


def import_itk() -> Any:
    """itk with the elastix module, or InputError saying how to install it."""
    try:
        import itk

        itk.ParameterObject  # noqa: B018  (lazy attribute: fails without itk-elastix)
    except (ImportError, AttributeError) as exc:
        raise InputError(
            f"method 'elastix' needs itk-elastix: pip install -c constraints.txt -e '.[elastix]' ({exc})"
        ) from None
    return itk


def to_itk(itk: Any, image: Image) -> Any:
    """An :class:`Image` as a float32 ``itk.Image`` (index (i, j[, k]), LPS origin/spacing/direction)."""
    origin, spacing, direction = itk_geometry(image)
    itk_image = itk.image_from_array(np.ascontiguousarray(image.data.T, dtype=np.float32))
    itk_image.SetOrigin(origin)
    itk_image.SetSpacing(spacing)
    itk_image.SetDirection(itk.matrix_from_array(np.asarray(direction).reshape(image.ndim, image.ndim)))
    return itk_image


def parameter_maps(itk: Any, params: Mapping[str, Any], ndim: int) -> Any:
    """The ``ParameterObject`` for ``params``: [default affine map,] default B-spline map with the exposed entries."""
    parameter_object = itk.ParameterObject.New()
    seed = [str(params["seed"] + 1)]
    if params["affine_stage"]:
        affine = parameter_object.GetDefaultParameterMap("affine", params["resolutions"])
        affine["RandomSeed"] = seed
        parameter_object.AddParameterMap(affine)
    bspline = parameter_object.GetDefaultParameterMap(
        "bspline", params["resolutions"], params["final_grid_spacing_mm"]
    )
    bspline["MaximumNumberOfIterations"] = [str(params["iterations"])]
    bspline["NumberOfSpatialSamples"] = [str(params["samples"])]
    bspline["Metric"] = [params["metric"], "TransformBendingEnergyPenalty"]
    bspline["Metric0Weight"] = ["1.0"]
    bspline["Metric1Weight"] = [repr(float(params["bending_weight"]))]
    bspline["RandomSeed"] = seed
    parameter_object.AddParameterMap(bspline)
    return parameter_object


def maps_as_dicts(parameter_object: Any) -> list[dict[str, list[str]]]:
    """Every map of a ``ParameterObject`` as ``{key: [values]}`` (for log.json)."""
    return [
        {key: list(values) for key, values in parameter_object.GetParameterMap(i).items()}
        for i in range(parameter_object.GetNumberOfParameterMaps())
    ]


def field_disp_vox(itk: Any, field: Any, fixed: Image) -> np.ndarray:
    """transformix's deformation field (LPS mm vectors on the fixed grid) -> disp_vox (ndim, *spatial) float32."""
    ndim = fixed.ndim
    vectors = np.asarray(itk.array_from_image(field), dtype=np.float64)  # (*reversed spatial, ndim)
    disp_lps = np.moveaxis(vectors.transpose(*reversed(range(ndim)), ndim), -1, 0)
    if disp_lps.shape[1:] != fixed.shape:
        raise RuntimeError(f"transformix field has shape {disp_lps.shape[1:]}, the fixed grid {fixed.shape}")
    _, spacing, direction = itk_geometry(fixed)
    index_to_lps = np.asarray(direction).reshape(ndim, ndim) @ np.diag(spacing)
    return np.einsum("rc,c...->r...", np.linalg.inv(index_to_lps), disp_lps).astype(np.float32)


def tool_versions() -> dict[str, str]:
    """itk-elastix's and ITK's versions."""
    return {"itk-elastix": metadata.version("itk-elastix"), "itk": metadata.version("itk")}


class Elastix(Method):
    """elastix B-spline through itk-elastix; see the module docstring."""

    name = "elastix"
    params = PARAMS
    presets = PRESETS
    uses_torch = False

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        coarsest = [n // 2 ** (params["resolutions"] - 1) for n in fixed.shape]
        if min(coarsest) < 4:
            raise InputError(
                f"method '{self.name}': parameter 'resolutions' ({params['resolutions']}) leaves {coarsest} voxels "
                f"at the coarsest level of an image of shape {fixed.shape}; use fewer resolutions"
            )
        itk = import_itk()
        fixed_itk, moving_itk = to_itk(itk, fixed), to_itk(itk, moving)
        parameter_object = parameter_maps(itk, params, fixed.ndim)
        threads = {"number_of_threads": params["threads"]} if params["threads"] > 0 else {}
        start = time.perf_counter()
        with signals_end_the_process():  # elastix does not return to Python until it is done
            _, result_parameters = itk.elastix_registration_method(
                fixed_itk, moving_itk, parameter_object=parameter_object, log_to_console=False, **threads,
            )
        registered_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="transformix-") as tmp:  # transformix writes its field there
            field = itk.transformix_deformation_field(moving_itk, result_parameters, output_directory=tmp)
        return RegistrationResult(
            disp_vox=field_disp_vox(itk, field, fixed),
            loss_history=[],
            best_iteration=None,
            best_criterion="elastix's final transform at the finest resolution (no selection)",
            device="cpu",
            extra={
                "tool": "itk-elastix",
                "tool_versions": tool_versions(),
                "elastix_parameter_maps": maps_as_dicts(parameter_object),
                "elastix_transform_parameter_maps": [
                    {k: v for k, v in m.items() if k != "TransformParameters"} for m in maps_as_dicts(result_parameters)
                ],
                "elastix_registration_s": registered_s,
            },
        )


METHOD = Elastix()
