"""ANTs symmetric normalisation (SyN) through antspyx (``pip install -e .[ants]``), 2D and 3D.

The ``antsRegistration`` command line is built here, stage by stage, and run by
``ants.registration`` (its argument-list form), so that every setting of the stages is a
parameter. The presets reproduce antspyx's named recipes (``type_of_transform``) argument for
argument (antspyx 0.6.3, ``ants/registration/registration.py``):

* ``SyN``: centre-of-mass initialisation, ``Affine[0.25]`` (Mattes MI, 32 bins, regular sampling
  of 20 %, 2100x1200x1200x0 iterations, shrink 4x2x2x1, sigmas 3x2x1x0 voxels), then
  ``SyN[0.2,3,0]`` with Mattes MI (32 bins, dense), 40x20x0 iterations, shrink 4x2x1, sigmas 2x1x0;
* ``ElasticSyN``: the same with 2100x1200x200x0 affine iterations;
* ``SyNOnly``: the SyN stage of ``SyN`` alone, identity initialisation;
* ``SyNCC``: ``Rigid[1]`` (2100x1200x1200x0, shrink 4x4x2x1, sigmas 3x2x1x0) and ``Affine[1]``
  (1200x1200x100, shrink 4x2x1, sigmas 2x1x0), then ``SyN[0.15,3,0]`` with CC radius 4,
  2100x1200x1200x20 iterations, shrink 4x3x2x1, sigmas 3x2x1x0 (ANTs' brain-MRI recipe).

Smoothing sigmas are in voxels of each level (ANTs' default unit, as antspyx passes them).

Conventions: images go to ANTs in LPS physical space (our ITK geometry, :func:`itk_geometry`).
The stages' transforms (``0GenericAffine.mat``, ``1Warp.nii.gz``) are composed by
``ants.apply_transforms(..., compose=...)`` into one displacement field on the fixed grid: a fixed
physical point ``p`` (LPS mm) maps to the moving point ``p + d(p)``, our convention; it becomes
``disp_vox = (D diag(s))^-1 d`` (voxels of the fixed grid). Warping by ``disp_vox`` equals
``ants.apply_transforms`` with the forward transforms (tests/methods/test_syn.py).

Repeats: ``threads`` sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` before antspyx's library is
first used (ITK reads it once per process); ``seed + 1`` is passed as ``--random-seed`` (ANTs' 0
draws a new seed each run) and seeds the linear stages' sampling. One thread and a fixed seed repeat exactly.
"""

from __future__ import annotations

import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from registration_core.core.io import Image, itk_geometry
from registration_core.core.outputs import signals_end_the_process
from registration_core.core.params import Param
from registration_core.errors import InputError
from registration_core.methods import Method, RegistrationResult
from registration_core.methods._sitk import field_to_disp_vox, parse_list

METRICS = {"mattes": "mattes", "cc": "CC", "meansquares": "meansquares"}
"""Our metric names -> antsRegistration's (the strings antspyx passes)."""

LINEAR_STAGES = {None: (), "rigid": ("rigid",), "affine": ("affine",), "rigid_affine": ("rigid", "affine")}
SYN_CONVERGENCE = (1e-7, 8)
"""SyN stage: convergence threshold and window (antspyx's ``[iterations,1e-7,8]``)."""

_SCHEDULE_HELP = "per level, coarse to fine, separated by x"

PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("preset", str, "SyN", "antspyx's type_of_transform recipe whose settings are the starting values",
              choices=("SyN", "SyNCC", "SyNOnly", "ElasticSyN")),
        Param("linear_stages", str, "affine", "linear stages before SyN, centre-of-mass initialised (none: SyN "
              "alone from the identity)", choices=tuple(k for k in LINEAR_STAGES if k), nullable=True),
        Param("rigid_iterations", str, "2100x1200x1200x0", f"rigid stage: iterations {_SCHEDULE_HELP}"),
        Param("rigid_shrink_factors", str, "4x4x2x1", f"rigid stage: shrink factors {_SCHEDULE_HELP}"),
        Param("rigid_smoothing_sigmas", str, "3x2x1x0", f"rigid stage: Gaussian sigmas in voxels {_SCHEDULE_HELP}"),
        Param("rigid_step", float, 1.0, "rigid stage: gradient step", minimum=0.0, exclusive_minimum=True),
        Param("affine_iterations", str, "2100x1200x1200x0", f"affine stage: iterations {_SCHEDULE_HELP}"),
        Param("affine_shrink_factors", str, "4x2x2x1", f"affine stage: shrink factors {_SCHEDULE_HELP}"),
        Param("affine_smoothing_sigmas", str, "3x2x1x0", f"affine stage: Gaussian sigmas in voxels {_SCHEDULE_HELP}"),
        Param("affine_step", float, 0.25, "affine stage: gradient step", minimum=0.0, exclusive_minimum=True),
        Param("linear_bins", int, 32, "linear stages: Mattes MI histogram bins", minimum=4),
        Param("linear_sampling", float, 0.2, "linear stages: fraction of voxels sampled (regular grid, "
              "randomly perturbed; seeded)", minimum=0.0, maximum=1.0, exclusive_minimum=True),
        Param("metric", str, "mattes", "SyN stage similarity: Mattes MI, local cross-correlation, mean squares",
              choices=tuple(METRICS)),
        Param("cc_radius", int, 4, "SyN stage, metric cc: window radius in voxels", minimum=1),
        Param("histogram_bins", int, 32, "SyN stage, metric mattes: histogram bins", minimum=4),
        Param("iterations", str, "40x20x0", f"SyN stage: iterations {_SCHEDULE_HELP} (0 skips a level)"),
        Param("shrink_factors", str, "4x2x1", f"SyN stage: shrink factors {_SCHEDULE_HELP}"),
        Param("smoothing_sigmas", str, "2x1x0", f"SyN stage: Gaussian sigmas in voxels {_SCHEDULE_HELP}"),
        Param("grad_step", float, 0.2, "SyN gradient step", minimum=0.0, exclusive_minimum=True),
        Param("flow_sigma", float, 3.0, "SyN: Gaussian sigma (voxels) smoothing the update field", minimum=0.0),
        Param("total_sigma", float, 0.0, "SyN: Gaussian sigma (voxels) smoothing the total field", minimum=0.0),
        Param("threads", int, 1, "ITK threads (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, read once per process): "
              "1 repeats exactly; 0 leaves ANTs' default (every core)", minimum=0),
        Param("seed", int, 0, "seed of the linear stages' sampling (ANTs receives --random-seed seed + 1: its 0 "
              "means a random seed)", minimum=0),
    ]
}

_SYN_AFFINE = {"linear_stages": "affine", "affine_iterations": "2100x1200x1200x0", "affine_shrink_factors": "4x2x2x1",
               "affine_smoothing_sigmas": "3x2x1x0", "affine_step": 0.25}
_SYN_DEFORMABLE = {"metric": "mattes", "histogram_bins": 32, "iterations": "40x20x0", "shrink_factors": "4x2x1",
                   "smoothing_sigmas": "2x1x0", "grad_step": 0.2, "flow_sigma": 3.0, "total_sigma": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    "SyN": {**_SYN_AFFINE, **_SYN_DEFORMABLE},
    "ElasticSyN": {**_SYN_AFFINE, "affine_iterations": "2100x1200x200x0", **_SYN_DEFORMABLE},
    "SyNOnly": {"linear_stages": None, **_SYN_DEFORMABLE},
    "SyNCC": {
        "linear_stages": "rigid_affine",
        "rigid_iterations": "2100x1200x1200x0", "rigid_shrink_factors": "4x4x2x1",
        "rigid_smoothing_sigmas": "3x2x1x0", "rigid_step": 1.0,
        "affine_iterations": "1200x1200x100", "affine_shrink_factors": "4x2x1",
        "affine_smoothing_sigmas": "2x1x0", "affine_step": 1.0,
        "metric": "cc", "cc_radius": 4, "iterations": "2100x1200x1200x20", "shrink_factors": "4x3x2x1",
        "smoothing_sigmas": "3x2x1x0", "grad_step": 0.15, "flow_sigma": 3.0, "total_sigma": 0.0,
    },
}


def stage_schedule(owner: str, params: Mapping[str, Any], prefix: str) -> tuple[str, str, str]:
    """The checked ``(iterations, shrink_factors, smoothing_sigmas)`` of a stage as ANTs strings (``4x2x1``).

    ``prefix`` is ``""`` (SyN stage), ``"rigid_"`` or ``"affine_"``; the three lists must have one
    entry per level.
    """
    iterations = parse_list(owner, f"{prefix}iterations", params[f"{prefix}iterations"], int, 0)
    shrink = parse_list(owner, f"{prefix}shrink_factors", params[f"{prefix}shrink_factors"], int, 1)
    sigmas = parse_list(owner, f"{prefix}smoothing_sigmas", params[f"{prefix}smoothing_sigmas"], float, 0.0)
    if not len(iterations) == len(shrink) == len(sigmas):
        raise InputError(
            f"{owner}: parameters '{prefix}iterations', '{prefix}shrink_factors' and '{prefix}smoothing_sigmas' "
            f"must have one value per level (got {len(iterations)}, {len(shrink)}, {len(sigmas)})"
        )
    return "x".join(map(str, iterations)), "x".join(map(str, shrink)), "x".join(f"{s:g}" for s in sigmas)


def _check_levels(owner: str, image: Image, params: Mapping[str, Any]) -> None:
    """InputError when a used stage's coarsest level would have fewer than 4 voxels along an axis."""
    prefixes = [f"{stage}_" for stage in LINEAR_STAGES[params["linear_stages"]]] + [""]
    for prefix in prefixes:
        largest = max(parse_list(owner, f"{prefix}shrink_factors", params[f"{prefix}shrink_factors"], int, 1))
        coarsest = [n // largest for n in image.shape]
        if min(coarsest) < 4:
            raise InputError(
                f"{owner}: parameter '{prefix}shrink_factors' ({largest}) leaves {coarsest} voxels at the coarsest "
                f"level of an image of shape {image.shape}; use smaller factors"
            )


def registration_args(params: Mapping[str, Any], ndim: int, fixed: str, moving: str, prefix: str) -> list[str]:
    """The ``antsRegistration`` argument list for ``params`` (files ``fixed``/``moving``, output ``prefix``).

    Stage order, metric strings and flags are those antspyx 0.6.3 writes for its named recipes.
    """
    owner = "method 'syn'"
    stages = LINEAR_STAGES[params["linear_stages"]]
    args = ["--dimensionality", str(ndim), "-r", f"[{fixed},{moving},1]" if stages else "Identity"]
    linear_metric = f"mattes[{fixed},{moving},1,{params['linear_bins']},regular,{params['linear_sampling']:g}]"
    for stage in stages:
        iterations, shrink, sigmas = stage_schedule(owner, params, f"{stage}_")
        args += [
            "--metric", linear_metric,
            "--transform", f"{stage.capitalize()}[{params[f'{stage}_step']:g}]",
            "--convergence", iterations, "--smoothing-sigmas", sigmas, "--shrink-factors", shrink,
            "-x", "[NA,NA]",
        ]
    radius_or_bins = {"mattes": params["histogram_bins"], "cc": params["cc_radius"], "meansquares": 0}[params["metric"]]
    iterations, shrink, sigmas = stage_schedule(owner, params, "")
    threshold, window = SYN_CONVERGENCE
    args += [
        "--metric", f"{METRICS[params['metric']]}[{fixed},{moving},1,{radius_or_bins}]",
        "--transform", f"SyN[{params['grad_step']:g},{params['flow_sigma']:g},{params['total_sigma']:g}]",
        "--convergence", f"[{iterations},{threshold:g},{window}]",
        "--smoothing-sigmas", sigmas, "--shrink-factors", shrink,
        "-u", "0", "-z", "1", "--output", f"[{prefix}]", "-x", "[NA,NA]",
        "--random-seed", str(params["seed"] + 1), "--float", "1", "--write-composite-transform", "0",
    ]
    return args


def set_threads(threads: int) -> None:
    """``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for ANTs (0: leave it); ITK reads it when first used in a process."""
    if threads > 0:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


def import_ants() -> Any:
    """antspyx, or InputError saying how to install it."""
    try:
        import ants
    except ImportError as exc:
        raise InputError(f"method 'syn' needs antspyx: pip install -c constraints.txt -e '.[ants]' ({exc})") from None
    return ants


def to_ants(ants: Any, image: Image) -> Any:
    """An :class:`Image` as a float32 ANTsImage: array in index order (i, j[, k]), LPS origin/spacing/direction."""
    origin, spacing, direction = itk_geometry(image)
    return ants.from_numpy(
        np.ascontiguousarray(image.data, dtype=np.float32), origin=origin, spacing=spacing,
        direction=np.asarray(direction).reshape(image.ndim, image.ndim),
    )


def forward_transforms(prefix: str) -> list[str]:
    """The stage outputs of a ``-z 1`` run in ``apply_transforms`` order (the warp first, then the affine)."""
    warps = sorted(Path(prefix).parent.glob(Path(prefix).name + "*[0-9]Warp.nii.gz"))
    affines = sorted(Path(prefix).parent.glob(Path(prefix).name + "*[0-9]GenericAffine.mat"))
    return [str(p) for p in warps + affines]


def composed_disp_vox(ants: Any, fixed: Any, moving: Any, transforms: list[str], prefix: str) -> np.ndarray:
    """The composition of ``transforms`` sampled on ``fixed``'s grid -> disp_vox (ndim, *spatial), fixed voxels."""
    path = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=transforms, compose=prefix)
    if path is None:
        raise RuntimeError("ants.apply_transforms did not write the composed displacement field")
    field = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    return field_to_disp_vox(field)


def tool_versions() -> dict[str, str]:
    """antspyx's version (its bundled ANTs is fixed by it)."""
    return {"antspyx": metadata.version("antspyx")}


class SyN(Method):
    """ANTs SyN through antspyx; see the module docstring."""

    name = "syn"
    params = PARAMS
    presets = PRESETS
    uses_torch = False

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        values = super().resolve_params(raw)
        owner = f"method '{self.name}'"
        for prefix in ("", "rigid_", "affine_"):
            stage_schedule(owner, values, prefix)
        return values

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        owner = f"method '{self.name}'"
        _check_levels(owner, fixed, params)
        set_threads(params["threads"])
        ants = import_ants()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="syn-") as tmp:
            fixed_ants, moving_ants = to_ants(ants, fixed), to_ants(ants, moving)
            fixed_path, moving_path = f"{tmp}/fixed.nrrd", f"{tmp}/moving.nrrd"
            ants.image_write(fixed_ants, fixed_path)
            ants.image_write(moving_ants, moving_path)
            prefix = f"{tmp}/reg"
            args = registration_args(params, fixed.ndim, fixed_path, moving_path, prefix)
            with signals_end_the_process():  # ANTs does not return to Python until it is done
                ants.registration(args, None)
            transforms = forward_transforms(prefix)
            registered_s = time.perf_counter() - start
            disp_vox = composed_disp_vox(ants, fixed_ants, moving_ants, transforms, f"{tmp}/composed")
        shown = [a.replace(tmp, "<tmp>") for a in args]
        return RegistrationResult(
            disp_vox=disp_vox.astype(np.float32),
            loss_history=[],
            best_iteration=None,
            best_criterion="antsRegistration's final transforms (no selection; ANTs reports no metric to Python)",
            device="cpu",
            extra={
                "tool": "antspyx",
                "tool_versions": tool_versions(),
                "ants_command": "antsRegistration " + " ".join(shown),
                "ants_transforms": [Path(t).name for t in transforms],
                "ants_registration_s": registered_s,
                "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
            },
        )


METHOD = SyN()
