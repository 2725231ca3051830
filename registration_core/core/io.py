"""Images, label maps, landmarks and displacement fields on disk.

Conventions (shared by the whole package):

* ``Image.data`` is the spatial array in *array index order* ``(i, j[, k])`` exactly as
  stored in NIfTI (nibabel's dataobj order); ``ndim`` is 2 or 3.
* ``Image.affine`` is a (4, 4) matrix mapping voxel indices ``(i, j, k, 1)`` to RAS+
  millimetres. 2D images keep a 4x4 affine whose third voxel axis is a singleton.
* ITK formats (.mha, .mhd, .nrrd) store geometry in LPS; they are converted to the RAS
  affine on reading (flip the signs of the first two physical axes) and back on writing.
* 2D images are written to ITK formats and converted to physical points / millimetre
  vectors with their *in-plane block*: columns (0, 1) of the affine and the two physical
  rows of the image's plane -- (x, y) for an axial slice, (x, z) for a coronal and (y, z)
  for a sagittal one -- plus those rows of the translation (see :func:`plane_rows`,
  :func:`spatial_affine`). ITK's LPS flip negates both in-plane axes of that frame (a 2D ITK
  file holds in-plane coordinates: true LPS for an axial slice).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from registration_core.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

ImageKind = Literal["image", "labels"]


def affine_spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    """Voxel size in mm along each of the first ``ndim`` array axes of a (4, 4) voxel -> RAS mm
    ``affine``: the norms of its first ``ndim`` columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :ndim], axis=0))


@dataclass(frozen=True, eq=False)
class Image:
    """A 2D or 3D image (or label map) on a physical grid.

    Attributes:
        data: spatial array of shape ``(*spatial)`` in array index order ``(i, j[, k])``;
            float32 for images, int32 for label maps when loaded by :func:`load_image`.
        affine: (4, 4) voxel index -> RAS+ mm; for 2D images the third voxel axis is a
            singleton (its column is kept as stored, usually the slice normal).
        path: the file it was read from, or None for derived images.

    Equality is identity (arrays have no single truth value): compare grids with
    :meth:`same_grid` and data with numpy.
    """

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``(n_i, n_j[, n_k])`` in voxels."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (:func:`affine_spacing`)."""
        return affine_spacing(self.affine, self.ndim)

    def with_data(self, data: np.ndarray) -> Image:
        """A copy with ``data`` (same spatial shape) on the same grid; ``path`` is dropped."""
        if tuple(data.shape) != self.shape:
            raise ValueError(f"with_data: shape {tuple(data.shape)} differs from the grid's {self.shape}")
        return Image(data=data, affine=self.affine.copy(), path=None)

    def same_grid(self, other: Image, atol: float = 1e-4) -> bool:
        """True when both images have the same spatial shape and affines equal within ``atol`` (mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def grid_difference(self, other: Image, atol: float = 1e-4) -> str | None:
        """None on the same grid, else which of shape / spacing / origin / direction differs, with both
        values (``self``'s first), e.g. ``"origin [0.0, 0.0, 0.0] vs [0.0, 0.0, 5.0] mm"``."""
        return grid_difference(self.shape, self.affine, other.shape, other.affine, atol)


def grid_difference(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray, atol: float = 1e-4
) -> str | None:
    """Describe how two grids differ (None when they agree within ``atol`` mm).

    Args:
        shape_a, shape_b: spatial shapes (n voxel axes).
        affine_a, affine_b: square voxel -> mm affines, (4, 4) or (n + 1, n + 1); only the first
            n columns give spacings and directions, the last column the origin.

    Returns:
        The first property that differs -- shape, spacing (mm), origin (mm), direction (unit
        columns, one per voxel axis), else the whole affine -- and its two values.
    """
    if tuple(shape_a) != tuple(shape_b):
        return f"shape {tuple(shape_a)} vs {tuple(shape_b)}"
    a, b = np.asarray(affine_a, dtype=np.float64), np.asarray(affine_b, dtype=np.float64)
    if a.shape != b.shape:
        return f"affine of size {a.shape} vs {b.shape}"
    n = len(shape_a)
    spacing_a, spacing_b = np.linalg.norm(a[:-1, :n], axis=0), np.linalg.norm(b[:-1, :n], axis=0)
    origin_a, origin_b = a[:-1, -1], b[:-1, -1]
    direction_a, direction_b = a[:-1, :n] / np.where(spacing_a > 0, spacing_a, 1), b[:-1, :n] / np.where(spacing_b > 0, spacing_b, 1)

    def show(values: np.ndarray) -> str:
        return str(np.round(values, 4).tolist())

    if not np.allclose(spacing_a, spacing_b, atol=atol):
        return f"spacing {show(spacing_a)} vs {show(spacing_b)} mm"
    if not np.allclose(origin_a, origin_b, atol=atol):
        return f"origin {show(origin_a)} vs {show(origin_b)} mm"
    if not np.allclose(direction_a, direction_b, atol=atol):
        return f"direction (columns) {show(direction_a.T)} vs {show(direction_b.T)}"
    if not np.allclose(a, b, atol=atol):
        return f"affine {show(a)} vs {show(b)}"
    return None


def plane_rows(affine: np.ndarray, ndim: int) -> tuple[int, ...]:
    """The physical RAS rows an image's voxel axes span: ``(0, 1, 2)`` in 3D; in 2D ``(0, 1)``
    (x, y) unless the slice is not in the x-y plane, then the pair of rows whose 2x2 block of
    columns (i, j) has the largest determinant ((0, 2) coronal, (1, 2) sagittal)."""
    if ndim == 3:
        return (0, 1, 2)
    linear = np.asarray(affine, dtype=np.float64)[:3, :2]
    scale = float(np.prod(np.linalg.norm(linear, axis=0))) or 1.0
    dets = {rows: abs(float(np.linalg.det(linear[list(rows)]))) / scale for rows in ((0, 1), (0, 2), (1, 2))}
    return (0, 1) if dets[(0, 1)] > 1e-6 else max(dets, key=lambda rows: dets[rows])


def spatial_affine(affine: np.ndarray, ndim: int) -> np.ndarray:
    """The ``(ndim + 1, ndim + 1)`` voxel -> RAS mm affine restricted to the image's axes.

    For 3D this is the affine itself. For 2D it is the in-plane block: voxel axes (i, j)
    mapped to the two physical axes of the slice's plane (:func:`plane_rows`; (x, y) = (R, A)
    for an axial slice), plus those entries of the translation. This is the geometry used for
    2D landmarks in mm, 2D displacement vectors in mm and 2D ITK files.
    """
    rows = [*plane_rows(affine, ndim), 3]
    columns = [*range(ndim), 3]
    return np.asarray(affine, dtype=np.float64)[np.ix_(rows, columns)]


def embed_affine(affine_nd: np.ndarray) -> np.ndarray:
    """Inverse of :func:`spatial_affine`: a (3, 3) 2D affine -> (4, 4) with an identity third axis."""
    ndim = affine_nd.shape[0] - 1
    if ndim == 3:
        return np.asarray(affine_nd, dtype=np.float64).copy()
    affine = np.eye(4)
    axes = [*range(ndim), 3]
    affine[np.ix_(axes, axes)] = affine_nd
    return affine


def _lps_flip(ndim: int) -> np.ndarray:
    """Diagonal (ndim, ndim) matrix converting RAS <-> LPS (negates the first two axes of the
    :func:`spatial_affine` frame; for a coronal or sagittal 2D slice, both in-plane axes)."""
    return np.diag([-1.0, -1.0, 1.0][:ndim])


def image_from_sitk(itk_image: sitk.Image, path: str | None = None) -> Image:
    """Convert a scalar SimpleITK image (LPS geometry, array (z, y, x)) to an :class:`Image`.

    The array is transposed to ITK index order ``(i, j[, k]) = (x, y[, z])`` and the
    origin / spacing / direction become the RAS affine ``flip @ [D diag(s) | o]``.
    The dtype is kept as read.
    """
    ndim = itk_image.GetDimension()
    data = sitk.GetArrayFromImage(itk_image).transpose()
    direction = np.asarray(itk_image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    linear = direction @ np.diag(itk_image.GetSpacing())
    flip = _lps_flip(ndim)
    affine_nd = np.eye(ndim + 1)
    affine_nd[:ndim, :ndim] = flip @ linear
    affine_nd[:ndim, ndim] = flip @ np.asarray(itk_image.GetOrigin(), dtype=np.float64)
    return Image(data=data, affine=embed_affine(affine_nd), path=path)


def itk_geometry(image: Image) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK ``(origin, spacing, direction)`` in LPS for the image's grid (2D: its in-plane block).

    Raises InputError when the grid cannot be written as an ITK image (sheared axes).
    """
    ndim = image.ndim
    affine_nd = spatial_affine(image.affine, ndim)
    flip = _lps_flip(ndim)
    linear = flip @ affine_nd[:ndim, :ndim]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{image.path or 'image'}: its affine has a zero-length axis; cannot build an ITK grid")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(ndim), atol=1e-4):
        raise InputError(
            f"{image.path or 'image'}: its affine is sheared (or a 2D image is not in the x-y plane); "
            "ITK formats need orthogonal axes: write NIfTI instead"
        )
    origin = flip @ affine_nd[:ndim, ndim]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def image_to_sitk(image: Image) -> sitk.Image:
    """Convert an :class:`Image` to a scalar SimpleITK image with LPS geometry (dtype kept)."""
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(image.data.transpose()))
    origin, spacing, direction = itk_geometry(image)
    itk_image.SetOrigin(origin)
    itk_image.SetSpacing(spacing)
    itk_image.SetDirection(direction)
    return itk_image


def _suffix(path: Path) -> str:
    """The image suffix of ``path`` (``.nii.gz`` counts as one) or raise InputError."""
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported image format; allowed: {', '.join(IMAGE_SUFFIXES)}")


def _reason(exc: Exception) -> str:
    """One line describing a reader's exception (SimpleITK puts the reason on its ``sitk::ERROR`` line;
    ITK's own source paths and line numbers are dropped)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    reason = next((line for line in lines if line.startswith("sitk::ERROR:")), lines[0])
    reason = re.sub(r"(?:/[^\s:]+)+\.(?:cxx|cpp|h|hxx|txx):\d+:?\s*", "", reason.removeprefix("sitk::ERROR:")).strip()
    return f"{type(exc).__name__}: {reason}"


def _check_data_file(path: Path) -> None:
    """An .mhd header names its voxel file (``ElementDataFile``): InputError naming both when that file is missing."""
    if not path.name.lower().endswith(".mhd"):
        return
    try:
        header = path.read_text(errors="replace")
    except OSError:
        return
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.M)
    if match is None:
        raise InputError(f"{path}: .mhd header has no ElementDataFile line")
    name = match.group(1)
    if name.upper() not in ("LOCAL", "LIST") and not name.upper().startswith("LIST ") and "%" not in name:
        data_file = Path(name) if Path(name).is_absolute() else path.parent / name
        if not data_file.is_file():
            raise InputError(f"{path}: its voxel file {data_file} (ElementDataFile) is missing")


def _read_raw(path: Path) -> Image:
    """Read an image file with nibabel (NIfTI) or SimpleITK (ITK formats), squeezing trailing singletons."""
    try:
        if _suffix(path) in NIFTI_SUFFIXES:
            nifti = nib.load(str(path))
            image = Image(data=np.asarray(nifti.dataobj), affine=np.asarray(nifti.affine, dtype=np.float64))
        else:
            _check_data_file(path)
            itk_image = sitk.ReadImage(str(path))
            if itk_image.GetNumberOfComponentsPerPixel() != 1:
                raise InputError(
                    f"{path}: has {itk_image.GetNumberOfComponentsPerPixel()} components per voxel; "
                    "expected a scalar image"
                )
            image = image_from_sitk(itk_image)
    except InputError:
        raise
    except Exception as exc:  # nibabel / ITK raise many types for corrupt or non-image files
        raise InputError(f"{path}: cannot read as an image ({_reason(exc)})") from exc
    data = image.data
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: has shape {tuple(image.data.shape)}; expected a 2D or 3D image")
    return Image(data=data, affine=image.affine, path=str(path))


def load_image(path: str | os.PathLike[str], kind: ImageKind = "image") -> Image:
    """Load a 2D/3D image or label map from NIfTI (.nii, .nii.gz) or ITK (.mha, .mhd, .nrrd).

    Args:
        path: the file.
        kind: "image" -> float32 data, rejected if constant; "labels" -> int32 data, rejected
            unless every value is an integer.

    Returns:
        An :class:`Image` with data ``(i, j[, k])`` and a voxel -> RAS mm affine. Trailing
        singleton axes are squeezed, so a (160, 192, 1) slice becomes 2D.

    Raises:
        InputError naming ``path``: missing, unreadable or non-image file, 4D+ data,
        NaN/Inf voxels, a constant image, non-integer labels.
    """
    path = Path(path)
    if kind not in ("image", "labels"):
        raise InputError(f"load_image: kind {kind!r} is not allowed; allowed: 'image', 'labels'")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    image = _read_raw(path)
    data = image.data
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{path}: voxel type {data.dtype} is not a real scalar")
    if data.size == 0:
        raise InputError(f"{path}: has an empty axis (shape {tuple(data.shape)})")
    if not np.all(np.isfinite(data)):
        bad = np.argwhere(~np.isfinite(data))[0]
        raise InputError(f"{path}: contains NaN or infinite voxels (first at index {bad.tolist()})")
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: its voxel-to-world affine is singular or not finite")
    if kind == "labels":
        if not np.array_equal(data, np.round(data)):
            raise InputError(f"{path}: label map has non-integer values (e.g. {data[data != np.round(data)].flat[0]})")
        low, high = data.min(), data.max()
        if low < np.iinfo(np.int32).min or high > np.iinfo(np.int32).max:
            raise InputError(
                f"{path}: label values {low}..{high} do not fit 32-bit label ids ({np.iinfo(np.int32).min}..{np.iinfo(np.int32).max})"
            )
        return Image(data=data.astype(np.int32), affine=image.affine, path=image.path)
    if np.abs(data).max() > np.finfo(np.float32).max:
        raise InputError(f"{path}: intensities reach {np.abs(data).max():.3g}, beyond the float32 range ({np.finfo(np.float32).max:.3g})")
    if data.min() == data.max():
        raise InputError(f"{path}: image is constant (every voxel is {data.flat[0]})")
    return Image(data=data.astype(np.float32), affine=image.affine, path=image.path)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` atomically; rename on success, delete on error.

    The temporary file has the same name inside a fresh hidden folder next to ``path`` (so
    format detection by suffix works, and side files such as an .mhd's .raw are moved along).
    The parent folder is created. Files are moved with ``os.replace``, ``path`` itself last.

    Example::

        with atomic_path("out/metrics.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp_path = tmp_dir / path.name
    try:
        yield tmp_path
        if not tmp_path.is_file():
            raise OSError(f"{path}: nothing was written")
        for side_file in tmp_dir.iterdir():
            if side_file != tmp_path:
                os.replace(side_file, path.parent / side_file.name)
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _disk_dtype(data: np.ndarray) -> type:
    """On-disk dtype: int32 for integer (label) data, uint8 for booleans, float32 otherwise."""
    if data.dtype == np.bool_:
        return np.uint8
    return np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32


def _json_value(value: Any) -> Any:
    """Recursively convert to JSON types: NaN/inf -> None, numpy scalars -> Python, keys -> str."""
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as strict JSON (undefined numbers as null, no NaN tokens) to ``path`` atomically."""
    text = json.dumps(_json_value(obj), indent=1, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Load a JSON file whose top level must be an object; InputError naming the file otherwise.

    ``what`` names the file in messages, e.g. ``"metrics file of job nodeo/default/a__b"``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: {what} is not valid JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise InputError(f"{path}: {what} must hold a JSON object, found {type(content).__name__}")
    return content


def write_sitk_checked(itk_image: sitk.Image, path: Path) -> None:
    """Write with SimpleITK, then read the file back and compare the voxels.

    ITK's writers can leave a truncated file without reporting it (a full disk or a file-size
    limit), and its readers then return garbage without an error: only comparing the data read
    back catches it. Raises OSError naming ``path``.
    """
    sitk.WriteImage(itk_image, str(path), useCompression=True)
    try:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise OSError(f"{path}: the written file cannot be read back (disk full?)") from exc
    if not np.array_equal(back, sitk.GetArrayViewFromImage(itk_image)):
        raise OSError(f"{path}: the written file does not hold the data written (disk full?)")


def save_image(image: Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` atomically: NIfTI via nibabel, .mha/.mhd/.nrrd via SimpleITK.

    Integer data (label maps) keep an integer dtype (int32); other data is written as float32.
    NIfTI files get the affine as both qform and sform (code 1, scanner) and mm units.
    """
    path = Path(path)
    suffix = _suffix(path)
    data = image.data.astype(_disk_dtype(image.data))
    with atomic_path(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            nifti = nib.Nifti1Image(data, image.affine)
            nifti.set_qform(image.affine, code=1)
            nifti.set_sform(image.affine, code=1)
            nifti.header.set_xyzt_units("mm")
            nib.save(nifti, str(tmp))
        else:
            write_sitk_checked(image_to_sitk(Image(data=data, affine=image.affine)), tmp)


# ----------------------------------------------------------------------------- landmarks


def voxel_to_ras(points_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (N, ndim) -> RAS mm (N, ndim) (2D: the in-plane block)."""
    points_vox = np.asarray(points_vox, dtype=np.float64)
    affine_nd = spatial_affine(affine, points_vox.shape[1])
    return points_vox @ affine_nd[:-1, :-1].T + affine_nd[:-1, -1]


def ras_to_voxel(points_ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS mm points (N, ndim) -> continuous voxel indices (N, ndim) (2D: the in-plane block)."""
    points_ras = np.asarray(points_ras, dtype=np.float64)
    affine_inv = np.linalg.inv(spatial_affine(affine, points_ras.shape[1]))
    return points_ras @ affine_inv[:-1, :-1].T + affine_inv[:-1, -1]


def _parse_number_rows(path: Path, lines: list[tuple[int, str]], ndim: int) -> np.ndarray:
    """Parse ``(line_number, text)`` rows of ``ndim`` whitespace-separated numbers -> (N, ndim)."""
    rows = []
    for number, text in lines:
        fields = text.split()
        if len(fields) != ndim:
            raise InputError(f"{path}: line {number} has {len(fields)} values; expected {ndim}")
        try:
            rows.append([float(field) for field in fields])
        except ValueError as exc:
            raise InputError(f"{path}: line {number} is not numeric: {text.strip()!r}") from exc
    return np.asarray(rows, dtype=np.float64).reshape(-1, ndim)


def _read_elastix_points(path: Path, reference: Image) -> np.ndarray:
    """Elastix point file -> voxel coordinates (N, ndim): ``point`` = ITK LPS mm, ``index`` = voxel index."""
    lines = [(number, text) for number, text in enumerate(path.read_text().splitlines(), start=1) if text.strip()]
    if len(lines) < 2:
        raise InputError(f"{path}: an elastix point file needs a 'point'/'index' line and a count line")
    kind = lines[0][1].strip().lower()
    if kind not in ("point", "index"):
        raise InputError(f"{path}: line {lines[0][0]} is {lines[0][1].strip()!r}; expected 'point' or 'index'")
    try:
        count = int(lines[1][1])
    except ValueError as exc:
        raise InputError(f"{path}: line {lines[1][0]} should be the number of points, got {lines[1][1]!r}") from exc
    points = _parse_number_rows(path, lines[2:], reference.ndim)
    if count != len(points):
        raise InputError(f"{path}: declares {count} points but lists {len(points)}")
    if kind == "index":
        return points
    return ras_to_voxel(points @ _lps_flip(reference.ndim), reference.affine)


def _read_csv_points(path: Path, reference: Image) -> np.ndarray:
    """CSV with header columns i,j[,k] (voxel indices) or x,y[,z] (RAS mm) -> voxel coordinates (N, ndim)."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises parser-specific errors on broken CSV
        raise InputError(f"{path}: cannot read as CSV ({type(exc).__name__})") from exc
    table.columns = [str(column).strip().lower() for column in table.columns]
    voxel_columns, ras_columns = list("ijk"[: reference.ndim]), list("xyz"[: reference.ndim])
    columns = voxel_columns if set(voxel_columns) <= set(table.columns) else ras_columns
    if not set(columns) <= set(table.columns):
        raise InputError(
            f"{path}: needs columns {','.join(voxel_columns)} (voxel) or {','.join(ras_columns)} (RAS mm); "
            f"found {','.join(table.columns)}"
        )
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad_rows.size:
        raise InputError(f"{path}: line {bad_rows[0] + 2} has a missing or non-numeric coordinate")
    return values if columns == voxel_columns else ras_to_voxel(values, reference.affine)


def load_landmarks(path: str | os.PathLike[str], reference: Image) -> np.ndarray:
    """Load landmarks as continuous voxel coordinates ``(N, ndim)`` of the ``reference`` grid.

    Formats:
        * ``.csv`` with a header: columns ``i,j[,k]`` (voxel indices, preferred when present)
          or ``x,y[,z]`` (physical RAS+ mm); other columns are ignored.
        * anything else: an elastix point file -- first line ``point`` (physical ITK LPS mm)
          or ``index`` (voxel indices), second line the number of points, then one point
          per line.

    Raises:
        InputError naming ``path``: missing file, malformed line (with its number), wrong
        count, no points, or a point outside the image extent ``[-0.5, n - 0.5]`` per axis.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        reader = _read_csv_points if path.suffix.lower() == ".csv" else _read_elastix_points
        points = reader(path, reference)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text landmark file") from exc
    if len(points) == 0:
        raise InputError(f"{path}: contains no points")
    not_finite = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if not_finite.size:
        raise InputError(f"{path}: point {not_finite[0] + 1} has a NaN or infinite coordinate")
    outside = np.flatnonzero(((points < -0.5) | (points > np.asarray(reference.shape) - 0.5)).any(axis=1))
    if outside.size:
        raise InputError(
            f"{path}: point {outside[0] + 1} at voxel {np.round(points[outside[0]], 2).tolist()} is outside "
            f"the reference grid of shape {reference.shape}"
            + (f" ({reference.path})" if reference.path else "")
        )
    return points


def save_landmarks(points_vox: np.ndarray, reference: Image, path: str | os.PathLike[str]) -> None:
    """Write landmarks ``(N, ndim)`` (voxel coordinates of ``reference``) as CSV, atomically.

    Columns ``i,j[,k]`` (continuous voxel indices) then ``x,y[,z]`` (RAS+ mm), readable by
    :func:`load_landmarks`.
    """
    import pandas as pd

    points_vox = np.asarray(points_vox, dtype=np.float64)
    if points_vox.ndim != 2 or points_vox.shape[1] != reference.ndim:
        raise InputError(f"save_landmarks: points have shape {points_vox.shape}; expected (N, {reference.ndim})")
    table = pd.DataFrame(
        np.hstack([points_vox, voxel_to_ras(points_vox, reference.affine)]),
        columns=list("ijk"[: reference.ndim]) + list("xyz"[: reference.ndim]),
    )
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


# ------------------------------------------------------------------- displacement fields


def save_displacement(disp_vox: np.ndarray, reference: Image, path: str | os.PathLike[str]) -> None:
    """Write a voxel displacement field as an ITK vector image (physical mm, LPS components).

    Args:
        disp_vox: (ndim, *spatial) displacement in voxels of the fixed (reference) grid, channel
            d along array axis d (a torch tensor is accepted too); the map is x -> x + u(x).
        reference: the fixed image; its grid becomes the field's origin/spacing/direction.
        path: any image suffix (usually ``displacement.nii.gz``), written atomically.

    The file holds float32 vectors ``flip @ A @ u`` (A: the affine's linear part, 2D: its
    in-plane 2x2 block; flip: RAS -> LPS), the convention of ITK's DisplacementFieldTransform.
    That transform needs float64 vectors: cast on reading (lossless), e.g. with
    :func:`load_itk_displacement_transform`.
    """
    from registration_core.core.spatial import disp_vox_to_mm

    disp_vox = _as_numpy(disp_vox)
    expected = (reference.ndim, *reference.shape)
    if disp_vox.shape != expected:
        raise InputError(f"save_displacement: field has shape {disp_vox.shape}; expected {expected}")
    if not np.all(np.isfinite(disp_vox)):
        raise InputError("save_displacement: field contains NaN or infinite values")
    flip = _lps_flip(reference.ndim)
    disp_lps = np.einsum("rc,c...->r...", flip, disp_vox_to_mm(disp_vox, reference.affine))
    vectors = np.moveaxis(disp_lps, 0, -1).transpose(*reversed(range(reference.ndim)), reference.ndim)
    field = sitk.GetImageFromArray(np.ascontiguousarray(vectors, dtype=np.float32), isVector=True)
    origin, spacing, direction = itk_geometry(reference)
    field.SetOrigin(origin)
    field.SetSpacing(spacing)
    field.SetDirection(direction)
    with atomic_path(path) as tmp:
        write_sitk_checked(field, tmp)


def _read_itk_field(path: Path, reference: Image) -> sitk.Image:
    """Read an ITK vector field and check it has ``reference.ndim`` components on the reference grid."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        _check_nifti_values(path)
    try:
        _check_data_file(path)
        field = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as an ITK image ({_reason(exc)})") from exc
    ndim = reference.ndim
    if field.GetDimension() != ndim or field.GetNumberOfComponentsPerPixel() != ndim:
        raise InputError(
            f"{path}: is a {field.GetDimension()}D field with {field.GetNumberOfComponentsPerPixel()} components; "
            f"expected {ndim}D with {ndim} components (the reference grid)"
        )
    vectors = sitk.GetArrayViewFromImage(field)
    if not np.all(np.isfinite(vectors)):
        raise InputError(f"{path}: contains NaN or infinite displacements")
    grid = image_from_sitk(sitk.VectorIndexSelectionCast(field, 0))
    difference = grid_difference(
        grid.shape, spatial_affine(grid.affine, ndim), reference.shape, spatial_affine(reference.affine, ndim), atol=1e-3
    )
    if difference is not None:
        where = f" ({reference.path})" if reference.path else ""
        raise InputError(f"{path}: its grid differs from the reference grid{where}: {difference}")
    return field


def _check_nifti_values(path: Path) -> None:
    """InputError naming ``path`` when a NIfTI file cannot be read or holds NaN/Inf values.

    ITK's NIfTI reader turns NaN vectors into zeros without a word, so the stored values are read
    with nibabel first.
    """
    try:
        values = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise InputError(f"{path}: cannot read as a NIfTI image ({_reason(exc)})") from exc
    if np.issubdtype(values.dtype, np.number) and not np.all(np.isfinite(values)):
        raise InputError(f"{path}: contains NaN or infinite values")


def load_displacement(path: str | os.PathLike[str], reference: Image) -> np.ndarray:
    """Read an ITK displacement field (mm, LPS) on ``reference``'s grid -> disp_vox (ndim, *spatial) float32.

    Inverse of :func:`save_displacement`. Raises InputError naming ``path`` when the file is
    missing or unreadable, has the wrong dimension / number of components, lies on another
    grid than ``reference`` (affines compared within 1e-3 mm), or holds NaN/Inf.
    """
    from registration_core.core.spatial import disp_mm_to_vox

    path = Path(path)
    field = _read_itk_field(path, reference)
    ndim = reference.ndim
    vectors = sitk.GetArrayFromImage(field).astype(np.float64)  # (*reversed spatial, ndim)
    if not np.all(np.isfinite(vectors)):
        raise InputError(f"{path}: contains NaN or infinite displacements")
    disp_lps = np.moveaxis(vectors.transpose(*reversed(range(ndim)), ndim), -1, 0)
    disp_ras = np.einsum("rc,c...->r...", _lps_flip(ndim), disp_lps)
    return disp_mm_to_vox(disp_ras, reference.affine)


def load_itk_displacement_transform(path: str | os.PathLike[str], reference: Image) -> sitk.DisplacementFieldTransform:
    """The field at ``path`` (checked against ``reference`` as in :func:`load_displacement`) as an ITK transform.

    ``sitk.Resample(moving_itk, fixed_itk, transform)`` then computes moving o (id + u).
    """
    field = _read_itk_field(Path(path), reference)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _as_numpy(array: np.ndarray) -> np.ndarray:
    """A numpy copy of a numpy array or a (detached, CPU) torch tensor."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)
