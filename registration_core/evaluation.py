"""Evaluate one registered pair from its files and write ``metrics.json``.

The fixed image is the atlas; the moving label map has been warped onto the fixed grid
(``warped_labels``); ``displacement`` is the registration's displacement field on the fixed grid
(ITK vector image in mm, read by :func:`registration_core.io.load_displacement` as voxels).
Fixed, warped and moving label maps must share one grid (same shape and affine).

``metrics.json`` keys (see CONTRACT.md):

* ``dice_mean``, ``dice_per_label`` ``{"<label>": float}``, ``hd95_mean`` (mm, over defined
  values), ``hd95_per_label`` ``{"<label>": float | null}``, ``hd95_undefined``
  ``{"<label>": reason}`` for labels present in one map only (their HD95 is null),
  ``n_labels`` (labels scored), ``labels_skipped`` (requested labels absent from both maps);
* ``neg_jac_ratio`` (r^D), ``neg_jac_sum`` (s^D), ``sdlogj``, ``detj_min``, ``detj_max`` over
  every voxel of the fixed grid (see :func:`registration_core.metrics.jacobian_stats`);
* with moving labels: ``dice_mean_before`` (fixed vs unwarped moving labels);
* with landmarks: ``tre_mean_mm``, ``tre_std_mm`` (ddof 0), ``tre_before_mm`` (mean distance
  with zero displacement), ``n_landmarks``.

Undefined numbers are written as JSON ``null`` (never ``NaN``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from registration_core import io, metrics
from registration_core.errors import InputError


# --------------------------------------------------------------------------- label specification


def _parse_labels(text: str, source: str) -> list[int]:
    """Labels from comma- and/or whitespace-separated positive integers; ``source`` names the origin."""
    tokens = [token for token in re.split(r"[,\s]+", text.strip()) if token]
    if not tokens:
        raise InputError(f"{source}: no labels given; expected positive integers such as '2,3,4'")
    labels: list[int] = []
    for token in tokens:
        if not re.fullmatch(r"\+?\d+", token) or int(token) <= 0:
            raise InputError(f"{source}: {token!r} is not a positive integer label (0 is background)")
        labels.append(int(token))
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise InputError(f"{source}: labels listed more than once: {duplicates}")
    return labels


def parse_label_spec(text: str | None, labels_file: Path | None) -> list[int] | None:
    """The labels to evaluate from ``--labels`` text or ``--labels-file``; None when neither is given.

    Args:
        text: e.g. ``"2,3,4"`` (commas and/or spaces).
        labels_file: a text file with one label per line or whitespace/comma separated labels.

    Raises:
        InputError: both given, an unreadable file, no labels, a token that is not a positive
        integer, or a label listed twice.
    """
    if text is not None and labels_file is not None:
        raise InputError("labels: give either a label list (--labels) or a labels file (--labels-file), not both")
    if text is not None:
        return _parse_labels(text, "--labels")
    if labels_file is None:
        return None
    path = Path(labels_file)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the labels file ({type(exc).__name__})") from exc
    return _parse_labels(content, str(path))


# --------------------------------------------------------------------------- loading


def _load_labels_on_grid(path: Path, reference: io.Image, reference_path: Path) -> io.Image:
    """Load a label map and check it lies on ``reference``'s grid (InputError naming both files)."""
    image = io.load_image(path, kind="labels")
    if not image.same_grid(reference):
        raise InputError(
            f"{path} (shape {image.shape}) is not on the grid of {reference_path} (shape {reference.shape}): "
            "shapes and affines must match"
        )
    return image


def _default_labels(fixed: io.Image, path: Path) -> list[int]:
    """Every nonzero label of the fixed label map."""
    labels = [int(label) for label in np.unique(fixed.data) if label != 0]
    if not labels:
        raise InputError(f"{path}: the fixed label map holds no nonzero label to evaluate")
    return labels


# --------------------------------------------------------------------------- metric groups


def _overlap_metrics(fixed: io.Image, warped: io.Image, labels: list[int]) -> dict[str, Any]:
    """Dice and HD95 keys of metrics.json (labels absent from both maps are skipped)."""
    try:
        dice = metrics.dice_summary(fixed.data, warped.data, labels)
    except InputError as exc:
        raise InputError(f"{fixed.path} vs {warped.path}: {exc}") from exc
    hd95 = metrics.hd95_summary(fixed.data, warped.data, labels, fixed.spacing)
    return {
        "dice_mean": dice["mean"],
        "dice_per_label": {str(label): value for label, value in dice["per_label"].items()},
        "hd95_mean": hd95["mean"],
        "hd95_per_label": {str(label): value for label, value in hd95["per_label"].items()},
        "hd95_undefined": {str(label): reason for label, reason in hd95["undefined"].items()},
        "n_labels": len(dice["per_label"]),
        "labels_skipped": dice["skipped"],
    }


def _jacobian_metrics(disp_vox: np.ndarray) -> dict[str, Any]:
    """Jacobian determinant keys of metrics.json, over every voxel of the fixed grid."""
    stats = metrics.jacobian_stats(disp_vox)
    keys = ("neg_jac_ratio", "neg_jac_sum", "sdlogj", "detj_min", "detj_max")
    return {key: stats[key] for key in keys}


def _landmark_metrics(
    fixed_landmarks: Path, moving_landmarks: Path, fixed: io.Image, moving_grid: io.Image, disp_vox: np.ndarray
) -> dict[str, Any]:
    """TRE keys of metrics.json: errors in mm after and before registration."""
    fixed_points = io.load_landmarks(fixed_landmarks, fixed)
    moving_points = io.load_landmarks(moving_landmarks, moving_grid)
    if len(fixed_points) != len(moving_points):
        raise InputError(
            f"{fixed_landmarks} holds {len(fixed_points)} landmarks but {moving_landmarks} holds "
            f"{len(moving_points)}; they must correspond one to one"
        )
    after = metrics.tre_mm(fixed_points, moving_points, disp_vox, fixed.spacing)
    before = metrics.tre_before(fixed_points, moving_points, fixed.spacing)
    return {
        "tre_mean_mm": float(np.mean(after)),
        "tre_std_mm": float(np.std(after)),
        "tre_before_mm": float(np.mean(before)),
        "n_landmarks": int(len(after)),
    }


# --------------------------------------------------------------------------- JSON


def write_metrics(result: dict[str, Any], out: Path) -> None:
    """Write ``result`` as strict JSON (undefined numbers as null) to ``out`` atomically."""
    io.write_json(result, out)


# --------------------------------------------------------------------------- entry point


def evaluate_pair(
    fixed_labels: Path,
    warped_labels: Path,
    displacement: Path,
    labels: Sequence[int] | None,
    out: Path,
    moving_labels: Path | None = None,
    fixed_landmarks: Path | None = None,
    moving_landmarks: Path | None = None,
) -> dict[str, Any]:
    """Compute the metrics of one registered pair, write them to ``out`` (JSON) and return them.

    Args:
        fixed_labels: label map of the fixed (atlas) image.
        warped_labels: moving label map warped onto the fixed grid.
        displacement: displacement field on the fixed grid (ITK vector image, mm).
        labels: labels to score; None means every nonzero label of the fixed label map.
        out: the metrics.json to write (atomically; nothing is written on error).
        moving_labels: unwarped moving label map on the same grid, for ``dice_mean_before``.
        fixed_landmarks, moving_landmarks: corresponding point files (both or neither); moving
            landmarks are read in the moving grid, which is the fixed grid.

    Returns:
        The metrics dict (keys in the module docstring); NaN where a value is undefined (written
        as null).

    Raises:
        InputError: unreadable files, label maps or field not on one grid, only one landmark file,
        landmark counts that differ, or no requested label present in either label map.
    """
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("landmarks: give both fixed_landmarks and moving_landmarks, or neither")
    fixed_path, warped_path = Path(fixed_labels), Path(warped_labels)
    fixed = io.load_image(fixed_path, kind="labels")
    warped = _load_labels_on_grid(warped_path, fixed, fixed_path)
    moving = None if moving_labels is None else _load_labels_on_grid(Path(moving_labels), fixed, fixed_path)
    disp_vox = io.load_displacement(Path(displacement), fixed)
    requested = _default_labels(fixed, fixed_path) if labels is None else list(labels)

    result = _overlap_metrics(fixed, warped, requested)
    result.update(_jacobian_metrics(disp_vox))
    if moving is not None:
        result["dice_mean_before"] = metrics.dice_summary(fixed.data, moving.data, requested)["mean"]
    if fixed_landmarks is not None and moving_landmarks is not None:
        moving_grid = fixed if moving is None else moving
        result.update(
            _landmark_metrics(Path(fixed_landmarks), Path(moving_landmarks), fixed, moving_grid, disp_vox)
        )
    write_metrics(result, Path(out))
    return result
