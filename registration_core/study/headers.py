"""What the image headers tell at plan time: the grid (shape, voxel -> RAS mm affine) of a dataset
file without reading its voxels, and the grid it will have after the preprocessing steps.

The geometry of each step follows :mod:`registration_core.preprocessing.steps` exactly
(``reorient`` and ``slice`` run the steps' own functions on a zero-stride array of the grid's
shape; ``resample`` applies the same formulas; tests compare every step with its real output).
Where the voxels decide the geometry the prediction says so: ``crop_pad`` centres its window on
the foreground, so its origin is unknown (shape, spacing and direction are known); an
``affine_align`` step puts the subject on its reference subject's grid at that stage. A grid that
cannot be predicted (an unreadable header, a step the plan cannot follow) is None: the checks
then leave the question to the jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registration_core.core.io import Image, affine_spacing, grid_difference

VALUE_STEPS = ("clip", "normalize", "lung_mask")
"""Steps that change voxel values only."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (voxels, ``(i, j[, k])``) and ``affine`` (4, 4) voxel -> RAS mm, as
    :class:`registration_core.core.io.Image` holds them; ``origin_known`` False when the voxels decide
    the translation (after ``crop_pad``)."""

    shape: tuple[int, ...]
    affine: np.ndarray
    origin_known: bool = True

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (:func:`registration_core.core.io.affine_spacing`)."""
        return affine_spacing(self.affine, len(self.shape))

    def difference(self, other: Grid) -> str | None:
        """How ``other`` differs from this grid (:func:`registration_core.core.io.grid_difference`),
        comparing origins only when both are known; None when they agree."""
        affine = np.array(other.affine, dtype=np.float64)
        if not (self.origin_known and other.origin_known):
            affine[:3, 3] = self.affine[:3, 3]
        return grid_difference(self.shape, self.affine, other.shape, affine)


def read_grid(path: str | Path) -> Grid | None:
    """The grid of an image file from its header (NIfTI with nibabel, ITK formats with SimpleITK's
    ImageFileReader, no voxel data read); trailing singleton axes dropped like
    :func:`registration_core.core.io.load_image`. None when the header cannot be read."""
    path = Path(path)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            header = nib.load(str(path))
            shape, affine = tuple(int(n) for n in header.shape), np.asarray(header.affine, dtype=np.float64)
        else:
            import SimpleITK as sitk

            from registration_core.core.io import image_from_sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            ndim = reader.GetDimension()
            probe = sitk.Image([1] * ndim, sitk.sitkUInt8)
            probe.SetSpacing(reader.GetSpacing())
            probe.SetOrigin(reader.GetOrigin())
            probe.SetDirection(reader.GetDirection())
            shape, affine = tuple(int(n) for n in reader.GetSize()), image_from_sitk(probe).affine
    except Exception:  # noqa: BLE001 - any unreadable header: the job will name the file
        return None
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3) or min(shape) < 1:
        return None
    return Grid(shape, affine)


def _probe(grid: Grid) -> Image:
    """An image of ``grid`` whose voxels take no memory (a zero-stride view)."""
    return Image(data=np.broadcast_to(np.uint8(0), grid.shape), affine=grid.affine)


def _reorient(grid: Grid, settings: Mapping[str, Any]) -> Grid:
    from registration_core.preprocessing.steps import reorient

    image = reorient(_probe(grid), settings.get("orientation", "RAS"))
    return Grid(tuple(image.shape), image.affine, grid.origin_known)


def _slice(grid: Grid, settings: Mapping[str, Any]) -> Grid:
    from registration_core.preprocessing.steps import extract_slice

    image = extract_slice(_probe(grid), settings["axis"], settings["index"])
    return Grid(tuple(image.shape), image.affine, True)  # the slice's origin is 0 by construction


def _resample(grid: Grid, settings: Mapping[str, Any]) -> Grid:
    """The formulas of :func:`registration_core.preprocessing.steps.resample` (no SimpleITK call)."""
    ndim = len(grid.shape)
    old_shape = np.asarray(grid.shape, dtype=np.float64)
    old_spacing = np.asarray(grid.spacing)

    def per_axis(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (ndim,)).copy()

    extent = old_shape * old_spacing
    if settings.get("spacing") is not None:
        new_spacing = per_axis(settings["spacing"])
        new_shape = np.maximum(1, np.round(extent / new_spacing))
    else:
        new_shape = (per_axis(settings["shape"]) if settings.get("shape") is not None
                     else np.maximum(1, np.round(old_shape * per_axis(settings["scale"]))))
        new_spacing = extent / new_shape
    ratio = new_spacing / old_spacing
    index_map = np.eye(4)
    index_map[:ndim, :ndim] = np.diag(ratio)
    index_map[:ndim, 3] = 0.5 * ratio - 0.5
    return Grid(tuple(int(n) for n in new_shape), np.asarray(grid.affine) @ index_map, grid.origin_known)


def _crop_pad(grid: Grid, settings: Mapping[str, Any]) -> Grid:
    return Grid(tuple(int(n) for n in settings["shape"]), grid.affine, False)


STEP_GRIDS: dict[str, Callable[[Grid, Mapping[str, Any]], Grid]] = {
    "reorient": _reorient,
    "slice": _slice,
    "resample": _resample,
    "crop_pad": _crop_pad,
    **{name: (lambda grid, settings: grid) for name in VALUE_STEPS},
}
"""The grid after each step, from the grid before it and the step's resolved settings."""


def predict_grid(raw: Grid | None, steps: Sequence[Mapping[str, Any]], reference: Callable[[int], Grid | None]) -> Grid | None:
    """The grid after ``steps`` (resolved settings, ``step`` key included) of an image whose raw grid
    is ``raw``; ``reference(position)`` gives the reference subject's grid before step ``position``
    (0-based), for ``affine_align``. None when a step's geometry is unknown or fails (the job will
    report it)."""
    grid = raw
    for position, step in enumerate(steps):
        if grid is None:
            return None
        name = step["step"]
        if name == "affine_align":
            grid = reference(position)
            continue
        rule = STEP_GRIDS.get(name)
        if rule is None:
            return None
        try:
            grid = rule(grid, step)
        except Exception:  # noqa: BLE001 - a step that fails on this grid: its job names the file
            return None
    return grid
