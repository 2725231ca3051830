"""Imports that convert dataset files into the study's formats: raw pixels -> NIfTI and dataset
point files -> landmark CSV.

Adapters (:mod:`registration_core.data.adapters`) list the files to convert in their manifest
(:class:`RawImport`, :class:`LandmarkImport`); the workflow converts them with
:func:`import_raw` (``import-raw`` command) and :func:`import_landmarks` (``import-landmarks``
command) into the study's results folder. Nothing is written into dataset folders.

Conventions: a raw grid's axis i varies fastest in the file; its affine maps voxel indices to RAS
mm (:func:`raw_affine`, voxel 0 at the origin). Point files give continuous voxel indices
``(i, j[, k])`` of the image they belong to, converted to 0-based indices on read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration_core.core.io import Image, save_image, save_landmarks
from registration_core.errors import InputError

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class RawImport:
    """A raw pixel file the workflow converts to NIfTI (:func:`import_raw`) before anything else.

    Attributes:
        raw: a headerless binary volume (e.g. DIR-Lab ``.img``) or a picture (.jpg, .jpeg, .png,
            .tif, .tiff, .bmp: read with SimpleITK, RGB -> green channel).
        shape: ``(n_i, n_j[, n_k])`` in voxels, axis i varying fastest in the file.
        spacing_mm: voxel size (mm) per array axis.
        dtype: numpy dtype string of the binary data, byte order included (``"<i2"``: little-endian
            int16); ``"u1"`` for pictures.
        orientation: three letters, the anatomical direction each voxel axis (i, j, k) points to
            (nibabel axis codes: ``"LPS"`` = ITK's identity direction; DIR-Lab is ``"LPI"``); a 2D
            image uses the first two (R/L then A/P) and the third is its slice normal.
        intercept: added to every stored value (DIR-Lab stores HU + 1024: intercept -1024).
    """

    raw: str
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    dtype: str
    orientation: str = "LPS"
    intercept: float = 0.0

    def cli_args(self) -> list[str]:
        """Arguments of ``python -m registration_core import-raw`` for this file (``--out`` excluded)."""
        return [
            "--raw", self.raw, "--shape", *map(str, self.shape), "--spacing", *map(repr, self.spacing_mm),
            "--dtype", self.dtype, "--orientation", self.orientation, "--intercept", repr(self.intercept),
        ]


@dataclass(frozen=True)
class LandmarkImport:
    """A dataset's own point file the workflow converts to a landmark CSV (:func:`import_landmarks`).

    ``format`` is one of :data:`LANDMARK_FORMATS`.
    """

    source: str
    format: str

    def cli_args(self) -> list[str]:
        """Arguments of ``python -m registration_core import-landmarks`` (``--reference``, ``--out`` excluded)."""
        return ["--points", self.source, "--format", self.format]


# ---------------------------------------------------------------------------------------------
# Raw pixels -> NIfTI


def raw_affine(shape: Sequence[int], spacing_mm: Sequence[float], orientation: str) -> np.ndarray:
    """(4, 4) voxel -> RAS mm affine of a raw grid: axis a points to ``orientation[a]``, voxel 0 at the origin.

    ``orientation`` is three letters from distinct axes (R/L, A/P, S/I); for a 2D grid the first two
    must be in-plane (R/L and A/P) and the third is the slice normal (spacing 1 mm).
    """
    ndim = len(shape)
    code = str(orientation).upper()
    axes = [AXIS_CODES.get(letter, (None, 0.0))[0] for letter in code]
    if len(code) != 3 or None in axes or len(set(axes)) != 3 or (ndim == 2 and set(axes[:2]) != {0, 1}):
        raise InputError(
            f"orientation {orientation!r} is not allowed; expected three letters from R/L, A/P, S/I"
            + (" with R/L and A/P first for a 2D image" if ndim == 2 else "")
        )
    if len(spacing_mm) != ndim or any(not s > 0 for s in spacing_mm):
        raise InputError(f"spacing {tuple(spacing_mm)} is not allowed; expected {ndim} values > 0 (mm)")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel_axis, letter in enumerate(code):
        physical_axis, sign = AXIS_CODES[letter]
        affine[physical_axis, voxel_axis] = sign * (spacing_mm[voxel_axis] if voxel_axis < ndim else 1.0)
    return affine


def check_raw_size(path: Path, shape: Sequence[int], dtype: str) -> Path:
    """A headerless raw file must hold exactly ``prod(shape)`` values of ``dtype``; returns ``path``."""
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputError(
            f"{path}: holds {size} bytes; a {'x'.join(map(str, shape))} volume of {dtype} needs {expected}"
        )
    return path


def picture_shape(path: Path) -> tuple[int, ...]:
    """Pixel grid ``(width, height)`` of a picture, read from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as a picture ({exc.__class__.__name__})") from None
    return tuple(int(n) for n in reader.GetSize())


def _check_raw_description(raw: RawImport) -> np.dtype:
    """Validate shape and dtype of a :class:`RawImport`; returns the numpy dtype."""
    if len(raw.shape) not in (2, 3) or any(isinstance(n, bool) or int(n) != n or n < 1 for n in raw.shape):
        raise InputError(f"shape {tuple(raw.shape)} is not allowed; expected 2 or 3 sizes >= 1")
    try:
        dtype = np.dtype(raw.dtype)
    except TypeError:
        raise InputError(f"dtype {raw.dtype!r} is not a numpy dtype (e.g. '<i2', '>f4', 'u1')") from None
    if dtype.kind not in "iuf":
        raise InputError(f"dtype {raw.dtype!r} is not allowed; expected an integer or float type")
    return dtype


def _read_picture(path: Path) -> np.ndarray:
    """A picture's pixels ``(width, height)`` (i = column, j = row); RGB(A) -> the green channel."""
    try:
        picture = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as a picture ({exc.__class__.__name__})") from None
    pixels = sitk.GetArrayFromImage(picture)  # (rows, columns[, components])
    if picture.GetNumberOfComponentsPerPixel() >= 3:
        pixels = pixels[..., 1]
    elif picture.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {picture.GetNumberOfComponentsPerPixel()} channels; expected gray or RGB")
    return pixels.transpose()


def read_raw(raw: RawImport) -> Image:
    """The image a :class:`RawImport` describes: data ``(*shape)`` + ``intercept``, affine from :func:`raw_affine`.

    Binary files are read as ``raw.dtype`` (byte order included) with axis i varying fastest
    (C order of the reversed shape, as ITK and the DIR-Lab files store volumes). Pictures
    (:data:`PICTURE_SUFFIXES`) are read with SimpleITK; an RGB(A) picture gives its green channel
    (the channel with the best vessel contrast in fundus photographs); ``raw.shape`` must equal
    ``(width, height)``.

    Raises InputError naming the file: missing, wrong size for shape x dtype, unreadable picture,
    NaN/Inf or beyond-float32 values (usually a wrong ``dtype``).
    """
    path = Path(raw.raw)
    dtype = _check_raw_description(raw)
    affine = raw_affine(raw.shape, raw.spacing_mm, raw.orientation)
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        data = _read_picture(path)
        if data.shape != tuple(raw.shape):
            found, expected = ("x".join(map(str, shape)) for shape in (data.shape, raw.shape))
            raise InputError(f"{path}: is {found} pixels; expected {expected}")
    else:
        check_raw_size(path, raw.shape, raw.dtype)
        data = np.fromfile(path, dtype=dtype).reshape(tuple(reversed(raw.shape))).transpose()
    if raw.intercept:
        integral = float(raw.intercept).is_integer() and data.dtype.kind in "iu"
        data = data + (np.int32(raw.intercept) if integral else np.float32(raw.intercept))
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            bad = np.argwhere(~np.isfinite(data))[0]
            raise InputError(f"{path}: holds NaN or infinite values as {raw.dtype} (first at index {bad.tolist()}); check --dtype")
        if np.abs(data).max() > np.finfo(np.float32).max:
            raise InputError(f"{path}: values reach {np.abs(data).max():.3g}, beyond float32; check --dtype")
    return Image(data=np.ascontiguousarray(data), affine=affine, path=str(path))


def import_raw(raw: RawImport, out_path: Path) -> None:
    """Write the image of a :class:`RawImport` (:func:`read_raw`) as NIfTI (or any io suffix), atomically."""
    save_image(read_raw(raw), out_path)


# ---------------------------------------------------------------------------------------------
# Dataset point files -> (N, ndim) continuous voxel indices of the image they belong to.

LANDMARK_FORMATS: dict[str, str] = {
    "dirlab-xyz": "DIR-Lab: whitespace-separated x y z per line, 1-based integer voxel indices",
    "learn2reg-csv": "Learn2Reg: comma-separated x,y,z per line, no header, 0-based voxel indices",
    "fire-fixed": "FIRE control points: x_1 y_1 x_2 y_2 per line in pixels; the first image's x_1 y_1",
    "fire-moving": "FIRE control points: x_1 y_1 x_2 y_2 per line in pixels; the second image's x_2 y_2",
}
# format -> (delimiter (None: whitespace), columns per line, columns taken, offset added)
_LANDMARK_LAYOUTS: dict[str, tuple[str | None, int, slice, float]] = {
    "dirlab-xyz": (None, 3, slice(0, 3), -1.0),
    "learn2reg-csv": (",", 3, slice(0, 3), 0.0),
    "fire-fixed": (None, 4, slice(0, 2), 0.0),
    "fire-moving": (None, 4, slice(2, 4), 0.0),
}


def read_landmark_file(path: str | Path, fmt: str) -> np.ndarray:
    """Read a dataset point file -> ``(N, ndim)`` continuous voxel indices ``(i, j[, k])``.

    Formats (:data:`LANDMARK_FORMATS`): ``dirlab-xyz`` (1-based, so 1 is subtracted; x, y, z are
    the raw file's axes i, j, k), ``learn2reg-csv`` (0-based voxel indices of the NIfTI's array
    axes), ``fire-fixed`` / ``fire-moving`` (pixel x = column = axis i, y = row = axis j, 0-based).

    Raises InputError naming the file and line: unknown format, wrong number of values, non-numeric
    values, no points.
    """
    if fmt not in _LANDMARK_LAYOUTS:
        raise InputError(f"landmark format {fmt!r} is not allowed; allowed: {', '.join(LANDMARK_FORMATS)}")
    delimiter, n_columns, taken, offset = _LANDMARK_LAYOUTS[fmt]
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(delimiter)]
        if len(fields) != n_columns:
            raise InputError(f"{path}: line {number} has {len(fields)} values; {fmt} expects {n_columns}")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise InputError(f"{path}: line {number} is not numeric: {line.strip()!r}") from None
        if not all(math.isfinite(value) for value in values):
            raise InputError(f"{path}: line {number} has a non-finite value")
        rows.append(values[taken])
    if not rows:
        raise InputError(f"{path}: contains no points")
    return np.asarray(rows, dtype=np.float64) + offset


def import_landmarks(points: LandmarkImport, reference: Image, out_csv: Path) -> None:
    """Convert a dataset point file to a landmark CSV (``i,j[,k],x,y[,z]``) on ``reference``'s grid.

    ``reference`` is the subject's image as imported (:func:`import_raw` for raw files). Points
    outside the grid (beyond half a voxel) raise InputError naming the file and the point.
    """
    points_vox = read_landmark_file(points.source, points.format)
    if points_vox.shape[1] != reference.ndim:
        raise InputError(
            f"{points.source}: {points.format} points are {points_vox.shape[1]}D; the image is {reference.ndim}D"
        )
    outside = np.flatnonzero(((points_vox < -0.5) | (points_vox > np.asarray(reference.shape) - 0.5)).any(axis=1))
    if outside.size:
        raise InputError(
            f"{points.source}: point {outside[0] + 1} at voxel {points_vox[outside[0]].tolist()} is outside "
            f"the image grid of shape {reference.shape}"
        )
    save_landmarks(points_vox, reference, out_csv)
