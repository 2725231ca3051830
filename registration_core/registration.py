"""One registration job end to end: read and check the inputs, run a method, write its outputs.

Output folder (all files written atomically, ``log.json`` last; on any error the files written so
far are removed so a failed job leaves nothing that looks finished):

* ``warped.nii.gz``: the moving image resampled on the fixed grid (linear);
* ``warped_labels.nii.gz``: the moving labels resampled on the fixed grid (nearest), when given;
* ``displacement.nii.gz``: ITK vector image, physical mm (LPS), on the fixed grid; it maps a fixed
  point ``p`` to the moving point ``p + d(p)`` (the fixed image is the atlas);
* ``inverse_displacement.nii.gz``: the same for the inverse map (moving point ``q`` -> ``q + e(q)``),
  from methods that estimate it (nephi);
* ``log.json``: parameters, loss history, best iterate, runtime, peak memory, device, versions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from registration_core.core.io import Image, load_image, load_landmarks, save_displacement, save_image, write_json
from registration_core.core.outputs import staged_folder
from registration_core.core.progress import progress
from registration_core.core.provenance import peak_memory_mb, software_versions
from registration_core.core.spatial import warp_array
from registration_core.errors import InputError
from registration_core.layout import REG_FILES, reg_file
from registration_core.methods import RegistrationResult, get_method


@dataclass(frozen=True)
class PairInputs:
    """The checked inputs of one job: images on one grid, optional labels and landmarks (voxels)."""

    fixed: Image
    moving: Image
    fixed_labels: Image | None = None
    moving_labels: Image | None = None
    fixed_landmarks: np.ndarray | None = None
    moving_landmarks: np.ndarray | None = None


def _check_same_grid(a: Image, b: Image, what: str) -> None:
    if a.ndim != b.ndim:
        raise InputError(f"{b.path}: is {b.ndim}D but {a.path} is {a.ndim}D ({what} must match)")
    difference = b.grid_difference(a)
    if difference is not None:
        raise InputError(
            f"{b.path}: its grid differs from {a.path}'s ({difference}); {what} must share one grid "
            "(resample in preprocessing)"
        )


def load_pair(
    fixed: Path,
    moving: Path,
    fixed_labels: Path | None = None,
    moving_labels: Path | None = None,
    fixed_landmarks: Path | None = None,
    moving_landmarks: Path | None = None,
) -> PairInputs:
    """Read and validate a pair; InputError names the offending file."""
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("--fixed-labels and --moving-labels must be given together")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("--fixed-landmarks and --moving-landmarks must be given together")
    fixed_img = load_image(fixed, "image")
    moving_img = load_image(moving, "image")
    _check_same_grid(fixed_img, moving_img, "fixed and moving images")
    labels: list[Image | None] = [None, None]
    if fixed_labels is not None and moving_labels is not None:
        labels = [load_image(fixed_labels, "labels"), load_image(moving_labels, "labels")]
        _check_same_grid(fixed_img, labels[0], "fixed image and fixed labels")
        _check_same_grid(moving_img, labels[1], "moving image and moving labels")
    points: list[np.ndarray | None] = [None, None]
    if fixed_landmarks is not None and moving_landmarks is not None:
        points = [load_landmarks(fixed_landmarks, fixed_img), load_landmarks(moving_landmarks, moving_img)]
        if len(points[0]) != len(points[1]):
            raise InputError(
                f"{moving_landmarks}: has {len(points[1])} landmarks but {fixed_landmarks} has {len(points[0])}"
            )
    return PairInputs(fixed_img, moving_img, labels[0], labels[1], points[0], points[1])


def write_outputs(out_dir: Path, pair: PairInputs, result: RegistrationResult, log: dict[str, Any]) -> None:
    """Write warped image/labels, displacement and log.json into ``out_dir``; all or nothing: the files
    of a previous run are removed first and the new ones moved in when all are written, log.json last
    (:func:`registration_core.core.outputs.staged_folder`)."""
    with staged_folder(out_dir, REG_FILES.values(), REG_FILES["log"]) as stage:
        warped = pair.fixed.with_data(warp_array(pair.moving.data, result.disp_vox, "linear"))
        save_image(warped, reg_file(stage, "warped"))
        if pair.moving_labels is not None:
            warped_labels = pair.fixed.with_data(warp_array(pair.moving_labels.data, result.disp_vox, "nearest"))
            save_image(warped_labels, reg_file(stage, "warped_labels"))
        save_displacement(result.disp_vox, pair.fixed, reg_file(stage, "displacement"))
        if result.inverse_disp_vox is not None:
            save_displacement(result.inverse_disp_vox, pair.fixed, reg_file(stage, "inverse_displacement"))
        write_json(log, reg_file(stage, "log"))


def run_registration(
    method: str,
    fixed: Path,
    moving: Path,
    out_dir: Path,
    params: Mapping[str, Any] | None = None,
    fixed_labels: Path | None = None,
    moving_labels: Path | None = None,
    fixed_landmarks: Path | None = None,
    moving_landmarks: Path | None = None,
) -> dict[str, Any]:
    """Register ``moving`` onto ``fixed`` (the atlas) with ``method`` and write the job's outputs.

    ``params`` holds raw values (strings from the CLI or YAML values); they are validated against
    the method's schema before anything is read or written. Returns the log dict.
    """
    reg_method = get_method(method)
    resolved = reg_method.resolve_params(params or {})
    # progress lines from reading the pair to the last file written (a heartbeat covers the I/O)
    with progress(f"register {method}"):
        pair = load_pair(fixed, moving, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks)
        start = time.perf_counter()
        result = reg_method.register(pair.fixed, pair.moving, resolved)
        runtime = time.perf_counter() - start
        peak_rss, peak_cuda = peak_memory_mb()
        log = {
            "method": method,
            "params": resolved,
            "seed": resolved.get("seed"),
            "device": result.device,
            "runtime_s": runtime,
            "peak_rss_mb": peak_rss,
            "peak_cuda_mb": peak_cuda,
            "iterations": max(len(result.loss_history) - 1, 0),
            "best_iteration": result.best_iteration,
            "best_criterion": result.best_criterion,
            "loss_history": result.loss_history,
            "versions": software_versions(),
            "inputs": {
                "fixed": str(fixed),
                "moving": str(moving),
                "fixed_labels": None if fixed_labels is None else str(fixed_labels),
                "moving_labels": None if moving_labels is None else str(moving_labels),
                "fixed_landmarks": None if fixed_landmarks is None else str(fixed_landmarks),
                "moving_landmarks": None if moving_landmarks is None else str(moving_landmarks),
            },
            "shape": list(pair.fixed.shape),
            "spacing_mm": [float(s) for s in pair.fixed.spacing],
            "conventions": {
                "fixed": "atlas",
                "displacement": "mm, LPS components, on the fixed grid; fixed point p maps to moving point p + d(p)",
            },
            **result.extra,
        }
        write_outputs(Path(out_dir), pair, result, log)
    return log
