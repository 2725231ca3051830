"""Evaluate one registered pair from its files and write ``metrics.json``.

The fixed image is the atlas; ``displacement`` is the registration's displacement field on the
fixed grid (ITK vector image in mm, read by :func:`registration_core.core.io.load_displacement` as
voxels), mapping a fixed point ``p`` to the moving point ``p + u(p)``. Every input lies on the
fixed grid (same shape and affine); the grid is read from the fixed labels, else the fixed
image, else the mask (one of them is required).

``metrics.json`` keys (see CONTRACT.md), by the inputs that produce them:

* always: ``neg_jac_ratio`` (r^D), ``neg_jac_sum`` (s^D), ``sdlogj``, ``detj_min``, ``detj_max``
  over every voxel of the fixed grid (see :func:`registration_core.evaluation.metrics.jacobian_stats`);
* fixed + warped labels: ``dice_mean``, ``dice_per_label`` ``{"<label>": float}``,
  ``hd95_voxel_mean`` (mm, MONAI's voxel-surface convention, over defined values),
  ``hd95_voxel_per_label`` ``{"<label>": float | null}``, ``hd95_undefined``
  ``{"<label>": reason}`` for labels present in one map only (their HD95 is null), ``n_labels``
  (labels scored), ``labels_skipped`` (requested labels absent from both maps). Without label
  maps none of these keys is written (no NaN Dice);
* moving labels too: ``dice_mean_before`` (fixed vs unwarped moving labels);
* landmarks: ``tre_mean_mm``, ``tre_std_mm`` (ddof 0), ``tre_max_mm``, ``tre_before_mm`` (mean
  distance with zero displacement), ``n_landmarks``;
* fixed + moving image: ``ncc_before``, ``mse_before``; fixed + warped image: ``ncc_after``,
  ``mse_after`` (global Pearson correlation and mean squared difference over the whole grid,
  :func:`registration_core.evaluation.metrics.image_similarity`);
* true displacement (known-truth pairs, :mod:`registration_core.data.truth`): ``tre_truth_mm`` and
  ``tre_truth_max_mm`` (mean and largest ``|u - d|`` in mm), ``tre_truth_before_mm`` (mean ``|d|``),
  ``n_truth_voxels``, over the voxels of the mask when given, else every voxel.
* published conventions, written last so that the keys above keep their order: with labels,
  ``hd95_mean`` and ``hd95_per_label`` (mm: HD95 of DeepMind's surface-distance as Learn2Reg
  computes it, :mod:`registration_core.evaluation.surface`); always ``sdlogj_l2r``,
  ``neg_jac_pct_nodeo`` and ``neg_jac_sum_nodeo``
  (:func:`registration_core.evaluation.metrics.jacobian_conventions`).

Every scalar key is declared, with its convention, in :mod:`registration_core.evaluation.registry`.

Undefined numbers are written as JSON ``null`` (never ``NaN``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from registration_core.core import io
from registration_core.errors import InputError
from registration_core.evaluation import labelsets, metrics

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
        text: e.g. ``"2,3,4"`` (commas and/or spaces), or a preset name of
            :data:`registration_core.evaluation.labelsets.LABEL_SETS` (``oasis-28``, ``voxelmorph-30``,
            ``mindboggle-oasis-28``: its scored labels; the groups they merge come from
            :func:`registration_core.evaluation.labelsets.groups`).
        labels_file: a text file with one label per line or whitespace/comma separated labels.

    Raises:
        InputError: both given, an unreadable file, no labels, a token that is not a positive
        integer, or a label listed twice.
    """
    if text is not None and labels_file is not None:
        raise InputError("labels: give either a label list (--labels) or a labels file (--labels-file), not both")
    if text is not None:
        named = labelsets.preset(text)
        return list(named) if named is not None else _parse_labels(text, "--labels")
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


def _load_on_grid(path: Path, reference: io.Image, reference_path: Path, kind: io.ImageKind) -> io.Image:
    """Load an image or label map and check it lies on ``reference``'s grid (InputError naming both files)."""
    image = io.load_image(path, kind=kind)
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


def _merged(labels: io.Image, label_groups: Mapping[int, Sequence[int]] | None) -> io.Image:
    """``labels`` relabelled by ``label_groups`` (unchanged without groups)."""
    if label_groups is None:
        return labels
    return dataclasses.replace(labels, data=labelsets.merge_labels(labels.data, label_groups))


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
        "hd95_voxel_mean": hd95["mean"],
        "hd95_voxel_per_label": {str(label): value for label, value in hd95["per_label"].items()},
        "hd95_undefined": {str(label): reason for label, reason in hd95["undefined"].items()},
        "n_labels": len(dice["per_label"]),
        "labels_skipped": dice["skipped"],
    }


def _convention_metrics(fixed: io.Image | None, warped: io.Image | None, labels: list[int] | None,
                        disp_vox: np.ndarray) -> dict[str, Any]:
    """Keys of the Learn2Reg and NODEO conventions: surfel HD95 (with labels) and Jacobian statistics."""
    result: dict[str, Any] = {}
    if fixed is not None and warped is not None and labels is not None:
        hd95 = metrics.hd95_summary(fixed.data, warped.data, labels, fixed.spacing, convention="surfel")
        result["hd95_mean"] = hd95["mean"]
        result["hd95_per_label"] = {str(label): value for label, value in hd95["per_label"].items()}
    result.update(metrics.jacobian_conventions(disp_vox))
    return result


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
        "tre_max_mm": float(np.max(after)),
        "tre_before_mm": float(np.mean(before)),
        "n_landmarks": int(len(after)),
    }


# --------------------------------------------------------------------------- JSON


def write_metrics(result: dict[str, Any], out: Path) -> None:
    """Write ``result`` as strict JSON (undefined numbers as null) to ``out`` atomically."""
    io.write_json(result, out)


# --------------------------------------------------------------------------- entry point


def _reference_grid(
    fixed_labels: Path | None, fixed_image: Path | None, mask: Path | None
) -> tuple[io.Image, Path, io.Image | None, io.Image | None]:
    """The fixed grid (first of fixed labels, fixed image, mask) and the loaded fixed labels / image."""
    labels = None if fixed_labels is None else io.load_image(fixed_labels, kind="labels")
    image = None if fixed_image is None else io.load_image(fixed_image, kind="image")
    if labels is not None:
        return labels, Path(fixed_labels), labels, image
    if image is not None:
        return image, Path(fixed_image), None, image
    if mask is not None:
        return io.load_image(mask, kind="labels"), Path(mask), None, None
    raise InputError("evaluate: give fixed labels, a fixed image or a mask (the fixed grid to evaluate on)")


def _check_combinations(
    fixed_labels: Path | None, warped_labels: Path | None, labels: Sequence[int] | None,
    moving_labels: Path | None, fixed_landmarks: Path | None, moving_landmarks: Path | None,
    fixed_image: Path | None, moving_image: Path | None, warped_image: Path | None,
    truth_displacement: Path | None, mask: Path | None,
) -> None:
    """Reject inputs that only make sense together when one of them is missing."""
    if (fixed_labels is None) != (warped_labels is None):
        raise InputError("labels: give both fixed_labels and warped_labels, or neither")
    if fixed_labels is None and (moving_labels is not None or labels is not None):
        raise InputError("labels: moving labels and a label list need fixed_labels and warped_labels")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("landmarks: give both fixed_landmarks and moving_landmarks, or neither")
    if fixed_image is None and (moving_image is not None or warped_image is not None):
        raise InputError("images: moving and warped images need fixed_image to be compared with")
    if mask is not None and truth_displacement is None:
        raise InputError("mask: it bounds tre_truth_mm and needs truth_displacement")


def _similarity_metrics(fixed: io.Image, fixed_path: Path, others: dict[str, Path | None]) -> dict[str, Any]:
    """``ncc_<when>`` and ``mse_<when>`` for each given image (``when``: before = moving, after = warped)."""
    result: dict[str, Any] = {}
    for when, path in others.items():
        if path is not None:
            other = _load_on_grid(Path(path), fixed, fixed_path, "image")
            similarity = metrics.image_similarity(fixed.data, other.data)
            result.update({f"ncc_{when}": similarity["ncc"], f"mse_{when}": similarity["mse"]})
    return result


def _truth_metrics(
    truth: Path, mask: Path | None, grid: io.Image, grid_path: Path, disp_vox: np.ndarray
) -> dict[str, Any]:
    """Dense TRE keys against the true displacement, inside the mask when given."""
    truth_vox = io.load_displacement(truth, grid)
    keep = None if mask is None else _load_on_grid(Path(mask), grid, grid_path, "labels").data
    error = metrics.displacement_error_mm(disp_vox, truth_vox, grid.spacing, keep)
    return {
        "tre_truth_mm": error["mean"],
        "tre_truth_max_mm": error["max"],
        "tre_truth_before_mm": error["before"],
        "n_truth_voxels": error["n_voxels"],
    }


def evaluate_pair(
    fixed_labels: Path | None,
    warped_labels: Path | None,
    displacement: Path,
    labels: Sequence[int] | None,
    out: Path,
    moving_labels: Path | None = None,
    fixed_landmarks: Path | None = None,
    moving_landmarks: Path | None = None,
    fixed_image: Path | None = None,
    moving_image: Path | None = None,
    warped_image: Path | None = None,
    truth_displacement: Path | None = None,
    mask: Path | None = None,
    label_groups: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Compute the metrics of one registered pair, write them to ``out`` (JSON) and return them.

    Args:
        fixed_labels, warped_labels: label map of the fixed (atlas) image and the moving label map
            warped onto the fixed grid (both or neither).
        displacement: displacement field on the fixed grid (ITK vector image, mm).
        labels: labels to score; None means every nonzero label of the fixed label map.
        out: the metrics.json to write (atomically; nothing is written on error).
        moving_labels: unwarped moving label map on the same grid, for ``dice_mean_before``.
        fixed_landmarks, moving_landmarks: corresponding point files (both or neither); moving
            landmarks are read in the moving grid, which is the fixed grid.
        fixed_image, moving_image, warped_image: intensity images for ``ncc_*`` / ``mse_*``.
        truth_displacement: the true displacement of a known-truth pair (ITK vector image, mm).
        mask: label map on the fixed grid bounding ``tre_truth_*`` (nonzero inside).
        label_groups: scored label -> the label-map values merged into it (a merging preset,
            :data:`registration_core.evaluation.labelsets.LABEL_GROUPS`); the fixed, warped and
            moving maps are relabelled by :func:`~registration_core.evaluation.labelsets.merge_labels`
            before every label metric, and ``labels`` defaults to the groups' labels.

    Returns:
        The metrics dict (keys in the module docstring); NaN where a value is undefined (written
        as null).

    Raises:
        InputError: unreadable files, inputs not on one grid, an input missing its partner (see
        the module docstring), landmark counts that differ, or no requested label present in
        either label map.
    """
    _check_combinations(
        fixed_labels, warped_labels, labels, moving_labels, fixed_landmarks, moving_landmarks,
        fixed_image, moving_image, warped_image, truth_displacement, mask,
    )
    if label_groups is not None and (fixed_labels is None or (labels is not None and not set(labels) <= set(label_groups))):
        raise InputError("label groups: give fixed and warped labels, and score only the groups' labels "
                         f"({', '.join(str(label) for label in label_groups)})")
    grid, grid_path, fixed, fixed_img = _reference_grid(fixed_labels, fixed_image, mask)
    if fixed_img is not None and fixed is not None and not fixed_img.same_grid(fixed):
        raise InputError(f"{fixed_image}: not on the grid of {fixed_labels} (shapes and affines must match)")
    disp_vox = io.load_displacement(Path(displacement), grid)

    result: dict[str, Any] = {}
    moving = warped = requested = None
    if fixed is not None and warped_labels is not None:
        warped = _merged(_load_on_grid(Path(warped_labels), fixed, grid_path, "labels"), label_groups)
        moving = None if moving_labels is None else _merged(
            _load_on_grid(Path(moving_labels), fixed, grid_path, "labels"), label_groups)
        fixed = _merged(fixed, label_groups)
        if labels is not None:
            requested = list(labels)
        else:
            requested = list(label_groups) if label_groups is not None else _default_labels(fixed, grid_path)
        result.update(_overlap_metrics(fixed, warped, requested))
        if moving is not None:
            result["dice_mean_before"] = metrics.dice_summary(fixed.data, moving.data, requested)["mean"]
    result.update(_jacobian_metrics(disp_vox))
    if fixed_landmarks is not None and moving_landmarks is not None:
        moving_grid = grid if moving is None else moving
        result.update(_landmark_metrics(Path(fixed_landmarks), Path(moving_landmarks), grid, moving_grid, disp_vox))
    if fixed_img is not None:
        others = {"before": moving_image, "after": warped_image}
        result.update(_similarity_metrics(fixed_img, Path(str(fixed_image)), others))
    if truth_displacement is not None:
        result.update(_truth_metrics(Path(truth_displacement), mask, grid, grid_path, disp_vox))
    result.update(_convention_metrics(fixed, warped, requested, disp_vox))
    write_metrics(result, Path(out))
    return result
