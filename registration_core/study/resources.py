"""Cluster resources of one registration job (threads, memory, wall time, GPU), estimated from the
number of voxels of the fixed grid and the method's parameters.

Model per method (measured on this project's CLI, float32 images, see :data:`COST_MODELS`):

- peak memory, MB = ``fixed_mb`` (interpreter, libraries) + ``mb_per_mvoxel`` x million voxels x
  ``memory_factor`` (NODEO: how many ODE function evaluations autograd keeps);
- wall time, s = ``startup_s`` + ``s_per_mvoxel_iteration`` x work / threads ** 0.7, where work is
  the million voxel-iterations over the pyramid levels (a level shrunk by s per axis has voxels /
  s ** ndim) and 0.7 is a conservative parallel efficiency exponent.

The request is the estimate times a safety margin (:data:`MEMORY_MARGIN`, :data:`TIME_MARGIN`),
never below the study config's ``resources.register`` values (``base``: they are floors), and grows
by :data:`RETRY_GROWTH` per retry (``attempt`` 2, 3, ... after running out of memory or time).
No Snakemake import: the workflow calls :func:`register_resources` from a resource function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registration_core.errors import InputError

MEMORY_MARGIN = 1.5
TIME_MARGIN = 2.0
RETRY_GROWTH = 1.5
PARALLEL_EXPONENT = 0.7
GPU_HOST_MB = 2500
"""Extra host memory of a CUDA process (driver context, cuDNN/cuBLAS handles), MB."""
GPU_SPEEDUP = 10.0
"""Assumed speed-up of a torch method on one GPU over one CPU thread (no GPU measured here)."""


@dataclass(frozen=True)
class CostModel:
    """Peak memory and time per iteration of a method, linear in the number of voxels.

    ``fixed_mb``: memory independent of the image (MB); ``mb_per_mvoxel``: MB per million voxels;
    ``startup_s``: imports, reading and writing (s); ``s_per_mvoxel_iteration``: seconds per
    iteration per million voxels on one thread.
    """

    fixed_mb: float
    mb_per_mvoxel: float
    startup_s: float
    s_per_mvoxel_iteration: float


COST_MODELS: dict[str, CostModel] = {
    # 2D 160x192: 490-550 MB; 3D 96^3: 904 MB and 2.6 CPU-seconds per iteration; 160x192x144:
    # 2450 MB (2 s per iteration on 2 threads was also seen: the time estimate is on the safe side).
    "nodeo": CostModel(fixed_mb=550, mb_per_mvoxel=443, startup_s=20, s_per_mvoxel_iteration=3.0),
    # SimpleITK, 2D 160x192: 335 MB (demons), 347 MB (bspline), 327 MB (affine); 3D 160x192x224:
    # 2100 MB (demons), over 1360 MB (bspline). Times per iteration are rough (a shared, loaded
    # machine); B-spline's L-BFGS evaluates the metric about twice per iteration.
    "demons": CostModel(fixed_mb=335, mb_per_mvoxel=260, startup_s=10, s_per_mvoxel_iteration=0.5),
    "bspline": CostModel(fixed_mb=350, mb_per_mvoxel=260, startup_s=10, s_per_mvoxel_iteration=3.0),
    "affine": CostModel(fixed_mb=330, mb_per_mvoxel=60, startup_s=10, s_per_mvoxel_iteration=0.1),
}
TORCH_DEFAULT = CostModel(fixed_mb=650, mb_per_mvoxel=600, startup_s=30, s_per_mvoxel_iteration=1.0)
"""Methods without a measured model that run on torch (learned methods: inference + io_steps)."""
SITK_DEFAULT = CostModel(fixed_mb=350, mb_per_mvoxel=260, startup_s=10, s_per_mvoxel_iteration=3.0)
"""Methods without a measured model that run on SimpleITK."""
_ODE_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4, "dopri5": 6}


def register_resources(
    method: str,
    params: Mapping[str, Any],
    shape: Sequence[int],
    base: Mapping[str, int],
    use_gpu: bool,
    attempt: int = 1,
) -> dict[str, int]:
    """Resources of a registration of ``method`` with ``params`` on a fixed grid of ``shape`` (voxels,
    2D or 3D).

    ``base``: the config's ``resources.register`` (threads, mem_mb, runtime in minutes), used as
    floors; ``use_gpu``: request one GPU for a torch method; ``attempt``: 1 for the first try.
    Returns threads, mem_mb (MB), runtime (minutes), gpu (0 or 1) and, with a GPU, cpus_per_gpu.
    InputError names a bad method, parameter, shape or base value.
    """
    from registration_core.methods import get_method

    spec = get_method(method)
    resolved = spec.resolve_params(params)
    voxels = _voxels(shape)
    threads, floor_mb, floor_min = (_base_value(base, key) for key in ("threads", "mem_mb", "runtime"))
    if attempt < 1:
        raise InputError(f"attempt must be >= 1, got {attempt}")
    gpu = use_gpu and spec.uses_torch
    model = COST_MODELS.get(method, TORCH_DEFAULT if spec.uses_torch else SITK_DEFAULT)
    growth = RETRY_GROWTH ** (attempt - 1)

    memory_mb = model.fixed_mb + model.mb_per_mvoxel * voxels / 1e6 * _memory_factor(method, resolved)
    memory_mb += GPU_HOST_MB if gpu else 0
    speedup = GPU_SPEEDUP if gpu else threads**PARALLEL_EXPONENT
    seconds = model.startup_s + model.s_per_mvoxel_iteration * _work_mvoxel_iterations(resolved, shape) / speedup
    resources = {
        "threads": threads,
        "mem_mb": math.ceil(max(floor_mb, memory_mb * MEMORY_MARGIN) * growth),
        "runtime": math.ceil(max(floor_min, seconds * TIME_MARGIN / 60) * growth),
        "gpu": int(gpu),
    }
    if gpu:
        resources["cpus_per_gpu"] = threads
    return resources


def image_shape(path: str | Path) -> tuple[int, ...]:
    """Spatial shape (voxels) of a NIfTI image from its header alone (no voxel data read); a trailing
    singleton axis of a 2D image is dropped."""
    import nibabel as nib

    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise InputError(f"{path}: cannot read the image header ({error})") from None
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D image, got shape {shape}")
    return shape


def _voxels(shape: Sequence[int]) -> int:
    """Number of voxels of a 2D or 3D ``shape``."""
    if len(shape) not in (2, 3) or any(int(n) < 1 for n in shape):
        raise InputError(f"image shape must be 2 or 3 positive sizes, got {tuple(shape)}")
    return math.prod(int(n) for n in shape)


def _base_value(base: Mapping[str, int], key: str) -> int:
    """A positive integer of the config's resources (threads, mem_mb, runtime)."""
    value = base.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"config key resources.register.{key}: must be an integer >= 1, got {value!r}")
    return value


def _memory_factor(method: str, params: Mapping[str, Any]) -> float:
    """How much more per-voxel memory the method needs than its default: NODEO without the adjoint
    keeps every ODE function evaluation for backpropagation, a quarter more per evaluation beyond
    the first (measured 3D 96^3: 4 Euler steps x1.71, one RK4 step x1.33 of the per-voxel part)."""
    if method != "nodeo" or params["adjoint"]:
        return 1.0
    steps = params["time_steps"] - 1
    if params["step_size"] is not None:
        steps = math.ceil(params["time_span"] / params["step_size"])
    return 1.0 + 0.25 * max(0, steps * _ODE_STAGES[params["ode_method"]] - 1)


def _work_mvoxel_iterations(params: Mapping[str, Any], shape: Sequence[int]) -> float:
    """Million voxel-iterations of a run: iterations per pyramid level x voxels of that level."""
    voxels = math.prod(int(n) for n in shape) / 1e6
    shrink = _levels(params.get("shrink_factors", "1"))
    iterations = _levels(params.get("iterations", params.get("io_steps", 0) + 1))
    if len(iterations) == 1:
        iterations = iterations * len(shrink)
    if len(iterations) != len(shrink):
        raise InputError(f"parameter 'iterations': {len(iterations)} values for {len(shrink)} pyramid levels")
    return sum(n * voxels / s ** len(shape) for n, s in zip(iterations, shrink))


def _levels(value: Any) -> tuple[int, ...]:
    """``[4, 2, 1]`` (a resolved list parameter), ``"4x2x1"``, ``"100"`` or an int as a tuple of ints."""
    items = value if isinstance(value, (list, tuple)) else str(value).lower().split("x")
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise InputError(f"expected integers per level separated by x (e.g. 4x2x1), got {value!r}") from None
