"""Datasets: the embedded demo (real MNI152 anatomy, synthetic subjects) and the dataset adapters.

Embedded demo
-------------
The demo needs no download: it reads the ICBM 2009a nonlinear symmetric MNI152 template that
ships inside the nilearn wheel (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_
converted.nii.gz``: skull-stripped T1w and grey / white matter probability maps, 197x233x189 at
1 mm, uint8). The files are read with nibabel from nilearn's package folder, located without
importing nilearn, so no nilearn fetcher (and no network access) is involved.

Label table (:data:`DEMO_LABELS`), hemisphere by the RAS x coordinate of the voxel centre
(x < 0 left, x > 0 right; the template is symmetric about the mid-sagittal plane x = 0):

====  =====================
 0    background
 1    left CSF
 2    left grey matter
 3    left white matter
 4    right CSF
 5    right grey matter
 6    right white matter
====  =====================

Tissue at 1 mm: the brain mask is ``T1 > 0.1`` (T1 scaled to [0, 1]; the template is
skull-stripped, every voxel outside the brain is exactly 0 and every brain voxel is above 0.1);
inside it a voxel is grey matter or white matter when that probability is the largest of
``p_gm``, ``p_wm`` and ``p_csf = 1 - p_gm - p_wm``, and CSF (ventricles, sulci, other non-GM/WM
brain voxels) otherwise. Volumes at 1 mm: CSF 8.5 %, GM 57.8 %, WM 33.7 % of 1 886 539 brain voxels.

The template at spacing ``s`` lies on an axis-aligned grid centred on the 1 mm template's centre
with an even number of voxels per axis (so no voxel centre lies on x = 0): the T1 is Gaussian
anti-aliased (FWHM ``sqrt(s^2 - 1)`` mm) and linearly resampled, the tissue map is resampled
nearest-neighbour, then split into hemispheres. Subject 0 is the template itself; subject ``k >= 1``
is ``template o (id + u_k)`` with its own diffeomorphic random deformation ``u_k``
(:func:`registration_core.data.synth.random_smooth_displacement`) followed by a random intensity
transform (gamma, bias field, noise). Randomness comes from ``numpy.random.default_rng([seed, k])``.

Folder adapter
--------------
:func:`discover_subjects` and :func:`subject_files` resolve per-subject files from path patterns
relative to a dataset folder, with ``{subject}`` standing for the subject id.

Dataset adapters and the manifest
---------------------------------
:func:`build_manifest` turns a dataset's config mapping into a :class:`Manifest`: subject ids,
their files, the (fixed, moving) pairs the dataset defines, and the files the workflow converts
first. Adapters (:data:`ADAPTERS`; the keys each reads: :data:`ADAPTER_KEYS`):

* ``folder``: NIfTI / ITK files per subject from ``{subject}`` patterns; landmarks as CSV or
  elastix point files (read by :func:`registration_core.core.io.load_landmarks` directly).
* ``neurite-oasis``: ``OASIS_OAS1_xxxx_MR1/`` folders (aligned_norm / aligned_seg35, or the 2D
  slice_norm / slice_seg24); subject ``OAS1_xxxx``.
* ``dirlab``: DIR-Lab 4DCT raw int16 volumes (geometry from :data:`DIRLAB_CASES`) and the 300
  extreme-phase landmarks; subjects ``case1-T00``; pairs (fixed T00, moving T50).
* ``learn2reg``: a Learn2Reg ``*_dataset.json`` (images, labels, masks, keypoint CSVs, pairs).
* ``fire``: FIRE fundus pairs (RGB JPEG -> green channel, control points); subjects ``A01-1``.

Nothing is written into dataset folders. Raw volumes and pictures are converted by
:func:`import_raw` (``import-raw`` command) and dataset point files by :func:`import_landmarks`
(``import-landmarks`` command) into the study's results folder.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from registration_core.core import spatial
from registration_core.data import synth
from registration_core.errors import InputError
from registration_core.core.io import Image, read_json_object, save_image, save_landmarks

DEMO_LABELS: dict[int, str] = {
    1: "left CSF",
    2: "left grey matter",
    3: "left white matter",
    4: "right CSF",
    5: "right grey matter",
    6: "right white matter",
}
TISSUES = ("csf", "grey matter", "white matter")  # tissue class t (1-based) -> label t (left), t + 3 (right)

BRAIN_MASK_THRESHOLD = 0.1  # on the T1 scaled to [0, 1]
MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Deformation of the demo subjects (RegNet single frequency): control grid and smoothing in mm.
DEMO_GRID_SPACING_MM = 40.0
DEMO_SMOOTH_SIGMA_MM = 5.0
DEMO_SPACING_RANGE_MM = (0.5, 10.0)
DEMO_OPTIONS = ("spacing_mm", "max_disp_mm")
PATTERN_KEYS = ("image", "labels", "landmarks", "mask")
SUBJECT_FIELD = "{subject}"


def mni152_template_files() -> dict[str, Path]:
    """Paths of the MNI152 2009a T1 / GM / WM files bundled with nilearn (keys ``t1``, ``gm``, ``wm``).

    Raises InputError when nilearn or one of the files is missing.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the demo dataset needs the nilearn package (its bundled MNI152 template); install nilearn")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {key: data_dir / name for key, name in MNI152_FILES.items()}
    for path in files.values():
        if not path.is_file():
            raise InputError(f"{path}: bundled MNI152 template file not found; reinstall nilearn")
    return files


def tissue_classes(t1: np.ndarray, p_gm: np.ndarray, p_wm: np.ndarray) -> np.ndarray:
    """Tissue map from a skull-stripped T1 and GM / WM probabilities, all (*spatial) in [0, 1].

    Returns int32 (*spatial): 0 outside ``t1 > BRAIN_MASK_THRESHOLD``, else ``1 + argmax`` of
    ``(p_csf, p_gm, p_wm)`` with ``p_csf = 1 - p_gm - p_wm`` (1 CSF, 2 GM, 3 WM; ties go to the first).
    """
    p_csf = 1.0 - p_gm - p_wm
    tissue = np.where(p_gm >= p_wm, 2, 3).astype(np.int32)  # ties go to the earlier class, as argmax
    tissue[(p_csf >= p_gm) & (p_csf >= p_wm)] = 1
    tissue[t1 <= BRAIN_MASK_THRESHOLD] = 0
    return tissue


@functools.lru_cache(maxsize=1)
def _template_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm template: T1 in [0, 1] (float32), tissue classes (int32), voxel -> RAS affine (4, 4)."""
    files = mni152_template_files()
    niftis = {key: nib.load(str(path)) for key, path in files.items()}
    arrays = {key: np.asarray(img.dataobj, dtype=np.float32) / 255.0 for key, img in niftis.items()}
    affine = np.asarray(niftis["t1"].affine, dtype=np.float64)
    return arrays["t1"], tissue_classes(arrays["t1"], arrays["gm"], arrays["wm"]), affine


def _demo_grid(
    shape_1mm: tuple[int, ...], affine_1mm: np.ndarray, spacing_mm: float
) -> tuple[tuple[int, ...], np.ndarray]:
    """Grid at ``spacing_mm`` covering the 1 mm template: (shape, 4x4 affine), same centre, even sizes."""
    spacing_in = np.linalg.norm(affine_1mm[:3, :3], axis=0)
    extent_mm = np.asarray(shape_1mm) * spacing_in
    shape = tuple(2 * math.ceil(e / (2 * spacing_mm)) for e in extent_mm)
    centre = affine_1mm @ np.append((np.asarray(shape_1mm) - 1) / 2.0, 1.0)
    direction = affine_1mm[:3, :3] / spacing_in
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing_mm
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, affine


def _resample(
    array: np.ndarray, affine_in: np.ndarray, shape: tuple[int, ...], affine_out: np.ndarray, order: int
) -> np.ndarray:
    """Resample ``array`` (grid ``affine_in``) onto (``shape``, ``affine_out``); 0 outside; order 0 or 1."""
    index_map = np.linalg.solve(affine_in, affine_out)  # output voxel -> input voxel
    return ndimage.affine_transform(
        array, index_map[:3, :3], offset=index_map[:3, 3], output_shape=shape, order=order, mode="constant", cval=0.0
    )


def _check_spacing(spacing_mm: float) -> float:
    """Validate the demo spacing (mm)."""
    low, high = DEMO_SPACING_RANGE_MM
    value = float(spacing_mm)
    if not low <= value <= high:
        raise InputError(f"spacing_mm={spacing_mm} is not allowed; expected a value in [{low}, {high}] mm")
    return value


@functools.lru_cache(maxsize=4)
def _template_arrays(spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template at ``spacing_mm``: T1 (float32), labels (int32, :data:`DEMO_LABELS`), affine (4, 4)."""
    t1_1mm, tissue_1mm, affine_1mm = _template_1mm()
    shape, affine = _demo_grid(t1_1mm.shape, affine_1mm, spacing_mm)
    spacing_in = np.linalg.norm(affine_1mm[:3, :3], axis=0)
    fwhm_mm = np.sqrt(np.maximum(spacing_mm**2 - spacing_in**2, 0.0))
    sigma_vox = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing_in
    t1 = _resample(ndimage.gaussian_filter(t1_1mm, sigma_vox), affine_1mm, shape, affine, order=1)
    tissue = _resample(tissue_1mm, affine_1mm, shape, affine, order=0)
    x_mm = np.tensordot(affine[0, :3], np.indices(shape), axes=1) + affine[0, 3]  # RAS x of voxel centres
    labels = np.where(tissue > 0, tissue + len(TISSUES) * (x_mm > 0), 0).astype(np.int32)
    return np.clip(t1, 0.0, 1.0).astype(np.float32), labels, affine


def demo_template(spacing_mm: float = 2.0) -> tuple[Image, Image]:
    """The demo atlas at isotropic ``spacing_mm`` (0.5-10 mm): (T1 image in [0, 1], label map).

    At 2 mm the grid is 100x118x96. Labels follow :data:`DEMO_LABELS`. Arrays are fresh copies.
    """
    t1, labels, affine = _template_arrays(_check_spacing(spacing_mm))
    return Image(data=t1.copy(), affine=affine.copy()), Image(data=labels.copy(), affine=affine.copy())


def _check_non_negative_int(name: str, value: int) -> int:
    """Validate a subject index or seed."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name}={value!r} is not allowed; expected an integer >= 0")
    return int(value)


def make_demo_subject(index: int, seed: int, spacing_mm: float = 2.0, max_disp_mm: float = 8.0) -> tuple[Image, Image]:
    """Demo subject ``index``: (T1 image, label map) on the template grid at ``spacing_mm``.

    Subject 0 is the undeformed template (use it as the atlas). Subject ``k >= 1`` is the template
    warped by a diffeomorphic RegNet-style field (control grid 40 mm, smoothing sigma 5 mm, largest
    displacement ``max_disp_mm``; linear for the image, nearest for labels), then given a random
    gamma, bias field and noise. Deterministic: the same ``(index, seed, options)`` gives identical
    arrays; the generator is ``numpy.random.default_rng([seed, index])``.
    """
    index = _check_non_negative_int("index", index)
    seed = _check_non_negative_int("seed", seed)
    image, labels = demo_template(spacing_mm)
    if index == 0:
        return image, labels
    rng = np.random.default_rng([seed, index])
    disp_vox = synth.random_smooth_displacement(
        image.shape,
        image.spacing,
        rng,
        grid_spacing_mm=DEMO_GRID_SPACING_MM,
        max_disp_mm=max_disp_mm,
        smooth_sigma_mm=DEMO_SMOOTH_SIGMA_MM,
        diffeomorphic=True,
    )
    warped = spatial.warp_array(image.data, disp_vox, mode="linear")
    warped_labels = spatial.warp_array(labels.data, disp_vox, mode="nearest")
    return image.with_data(synth.random_intensity_transform(warped, rng)), labels.with_data(warped_labels)


def write_demo_subject(index: int, seed: int, out_image: Path, out_labels: Path, **options: float) -> None:
    """Write :func:`make_demo_subject` ``(index, seed, **options)`` to ``out_image`` and ``out_labels``.

    ``options``: ``spacing_mm``, ``max_disp_mm``. Files are written atomically (:func:`io.save_image`).
    """
    unknown = sorted(set(options) - set(DEMO_OPTIONS))
    if unknown:
        raise InputError(f"demo option {unknown[0]!r} is not allowed; allowed: {', '.join(DEMO_OPTIONS)}")
    image, labels = make_demo_subject(index, seed, **options)
    save_image(image, out_image)
    save_image(labels, out_labels)


def _check_pattern(key: str, pattern: str, need_subject: bool) -> None:
    """A relative path pattern without glob characters; ``{subject}`` required when ``need_subject``."""
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{key} pattern {pattern!r} is not allowed; expected a non-empty relative path string")
    if need_subject and SUBJECT_FIELD not in pattern:
        raise InputError(f"{key} pattern {pattern!r} must contain {SUBJECT_FIELD}")
    if any(c in pattern for c in "*?[]") or Path(pattern).is_absolute():
        raise InputError(f"{key} pattern {pattern!r} must be a relative path without glob characters (*?[])")


def _check_dataset_path(path: Path) -> Path:
    """The dataset folder must exist."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"dataset path {path} does not exist or is not a folder")
    return path


def _check_subject_id(subject: str) -> None:
    """A subject id is a non-empty string without path separators."""
    if not isinstance(subject, str) or not subject or "/" in subject or subject in (".", ".."):
        raise InputError(f"subject id {subject!r} is not allowed; expected a non-empty name without '/'")


def _resolve(path: Path, pattern: str, subject: str) -> Path:
    """``path / pattern`` with every ``{subject}`` replaced by ``subject``."""
    return path / pattern.replace(SUBJECT_FIELD, subject)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching the pattern's relative POSIX path; group ``subject`` (repeats must agree)."""
    parts = [re.escape(part) for part in pattern.split(SUBJECT_FIELD)]
    regex = parts[0] + "(?P<subject>[^/]+)" + parts[1] + "".join("(?P=subject)" + part for part in parts[2:])
    return re.compile(regex)


def discover_subjects(path: Path, image_pattern: str, subjects: list[str] | None = None) -> list[str]:
    """Subject ids of a folder dataset whose image is ``path / image_pattern`` with ``{subject}`` filled in.

    Args:
        path: dataset folder.
        image_pattern: relative path containing ``{subject}`` (possibly several times), e.g.
            ``"{subject}/t1w_brain.nii.gz"`` or ``"{subject}_T1.nii.gz"``; no glob characters.
        subjects: ``None`` to discover every subject with an existing image file (sorted ids),
            or the ids to use (order kept), each of which must have its image file.

    Raises:
        InputError: missing folder, bad pattern or id, a listed subject without its image file
            (named), or no subject matching the pattern (path and pattern named).
    """
    path = _check_dataset_path(path)
    _check_pattern("image", image_pattern, need_subject=True)
    if subjects is None:
        regex = _pattern_regex(image_pattern)
        found = set()
        for candidate in path.glob(image_pattern.replace(SUBJECT_FIELD, "*")):
            match = regex.fullmatch(candidate.relative_to(path).as_posix())
            if match and candidate.is_file():
                found.add(match.group("subject"))
        if not found:
            raise InputError(f"no subject in dataset path {path} matches the image pattern {image_pattern!r}")
        return sorted(found)
    if isinstance(subjects, str) or not list(subjects):
        raise InputError(f"subjects {subjects!r} is not allowed; expected a non-empty list of ids or null")
    subjects = list(subjects)
    duplicates = sorted({s for s in subjects if subjects.count(s) > 1})
    if duplicates:
        raise InputError(f"subject {duplicates[0]!r} is listed more than once")
    for subject in subjects:
        _check_subject_id(subject)
        image = _resolve(path, image_pattern, subject)
        if not image.is_file():
            raise InputError(f"subject {subject!r}: image file {image} not found (pattern {image_pattern!r})")
    return subjects


def subject_files(path: Path, pattern_dict: dict[str, str | None], subject: str) -> dict[str, Path]:
    """Resolve a subject's files from patterns: keys ``image`` (required), ``labels``, ``landmarks``, ``mask``.

    ``{subject}`` in a pattern is replaced by the id; it is required in the image pattern and
    optional elsewhere (a pattern without it names one file shared by all subjects). Keys whose
    pattern is ``None`` are left out of the result.

    Returns:
        ``{key: Path}`` of existing files.

    Raises:
        InputError naming the key and file: unknown key, missing image pattern, bad pattern or
        subject id, missing dataset folder or file.
    """
    path = _check_dataset_path(path)
    _check_subject_id(subject)
    unknown = sorted(set(pattern_dict) - set(PATTERN_KEYS))
    if unknown:
        raise InputError(f"file pattern key {unknown[0]!r} is not allowed; allowed: {', '.join(PATTERN_KEYS)}")
    if pattern_dict.get("image") is None:
        raise InputError("file patterns need an 'image' pattern")
    files = {}
    for key in PATTERN_KEYS:
        pattern = pattern_dict.get(key)
        if pattern is None:
            continue
        _check_pattern(key, pattern, need_subject=key == "image")
        file = _resolve(path, pattern, subject)
        if not file.is_file():
            raise InputError(f"subject {subject!r}: {key} file {file} not found (pattern {pattern!r})")
        files[key] = file
    return files


# ---------------------------------------------------------------------------------------------
# Dataset manifest: one adapter per dataset layout


@dataclass(frozen=True)
class SubjectFiles:
    """A subject's input files (paths as str; relative to the working dir when the config path is).

    ``landmarks`` is a CSV (``i,j[,k]`` voxel or ``x,y[,z]`` RAS mm) or an elastix point file as
    :func:`registration_core.core.io.load_landmarks` reads it, or a dataset's own point file listed in
    :attr:`Manifest.landmark_imports`. For a subject in :attr:`Manifest.raw_imports`, ``image``
    is the raw file: convert it with :func:`import_raw` first.
    """

    image: str
    labels: str | None = None
    landmarks: str | None = None
    mask: str | None = None


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


@dataclass(frozen=True)
class Manifest:
    """The subjects of a dataset and their files, as an adapter found them.

    Attributes:
        subjects: subject ids in dataset order.
        files: subject -> :class:`SubjectFiles`.
        pairs: (fixed, moving) pairs the dataset defines (Learn2Reg pairs, DIR-Lab inhale/exhale,
            FIRE image pairs, or the folder adapter's ``pairs`` key); None when it defines none.
        raw_imports: subject -> raw image to convert to NIfTI first.
        landmark_imports: subject -> point file to convert to a landmark CSV (on the imported image).
    """

    subjects: tuple[str, ...]
    files: dict[str, SubjectFiles]
    pairs: tuple[tuple[str, str], ...] | None = None
    raw_imports: dict[str, RawImport] = field(default_factory=dict)
    landmark_imports: dict[str, LandmarkImport] = field(default_factory=dict)


ADAPTERS: tuple[str, ...] = ("folder", "neurite-oasis", "dirlab", "learn2reg", "fire")
ADAPTER_KEYS: dict[str, tuple[str, ...]] = {
    "folder": ("path", "image", "labels", "landmarks", "mask", "subjects", "pairs"),
    "neurite-oasis": ("path", "variant", "subjects", "limit"),
    "dirlab": ("path", "cases", "phases", "fixed_phase", "landmarks", "intercept"),
    "learn2reg": ("path", "json", "split"),
    "fire": ("path", "category", "spacing_mm"),
}
"""The config keys each adapter reads (besides ``adapter`` and the study's own dataset keys)."""


class _Spec:
    """A dataset's config mapping with typed getters whose errors name ``config key <where>.<key>``."""

    def __init__(self, spec: Mapping[str, Any], base_dir: Path, where: str) -> None:
        self.spec, self.base_dir, self.where = spec, Path(base_dir), where

    def error(self, key: str, message: str) -> InputError:
        """An InputError about ``key``."""
        return InputError(f"config key {self.where}.{key}: {message}")

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value (``default`` when absent or null)."""
        value = self.spec.get(key)
        return default if value is None else value

    def folder(self, key: str = "path") -> Path:
        """A required existing folder; a relative path is taken relative to ``base_dir``."""
        value = self.spec.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected the dataset folder (a path)")
        path = Path(value) if Path(value).is_absolute() else self.base_dir / value
        if not path.is_dir():
            raise self.error(key, f"folder {path} not found")
        return path

    def choice(self, key: str, allowed: Sequence[str], default: str | None) -> str | None:
        """One of ``allowed`` (or ``default`` when absent)."""
        value = self.get(key, default)
        if value is not None and value not in allowed:
            raise self.error(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def number(self, key: str, default: float, positive: bool = False) -> float:
        """A real number (``> 0`` when ``positive``)."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"{value!r} is not allowed; expected a number")
        if positive and value <= 0:
            raise self.error(key, f"{value!r} is not allowed; expected a number > 0")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"{value!r} is not allowed; expected true or false")
        return value

    def limit(self, key: str = "limit") -> int | None:
        """None or an integer >= 1."""
        value = self.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise self.error(key, f"{value!r} is not allowed; expected an integer >= 1 or null")
        return value

    def items(self, key: str, item_type: type) -> list[Any] | None:
        """None or a non-empty list of distinct ``item_type`` values."""
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected a non-empty list or null")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, item_type):
                raise self.error(key, f"item {item!r} is not allowed; expected {item_type.__name__} items")
        duplicates = sorted({str(item) for item in value if list(value).count(item) > 1})
        if duplicates:
            raise self.error(key, f"{duplicates[0]} is listed more than once")
        return list(value)

    def pairs(self, subjects: Sequence[str], key: str = "pairs") -> tuple[tuple[str, str], ...] | None:
        """None or a list of ``[fixed, moving]`` subject pairs (distinct subjects of ``subjects``)."""
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected a non-empty list of [fixed, moving]")
        known = set(subjects)
        pairs = []
        for index, pair in enumerate(value):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2 or pair[0] == pair[1]:
                raise self.error(f"{key}[{index}]", f"{pair!r} is not allowed; expected [fixed, moving], two subjects")
            for subject in pair:
                if subject not in known:
                    raise self.error(f"{key}[{index}]", f"subject {subject!r} is not in the dataset")
            pairs.append((pair[0], pair[1]))
        return tuple(pairs)

    def wrap(self, call: Callable[[], Any]) -> Any:
        """Run ``call``, prefixing an InputError's message with ``config key <where>``."""
        try:
            return call()
        except InputError as exc:
            raise InputError(f"config key {self.where}: {exc}") from None


def _pattern_files(spec: _Spec, root: Path, patterns: dict[str, str | None], subjects: list[str] | None,
                   limit: int | None = None) -> tuple[list[str], dict[str, SubjectFiles]]:
    """Subjects found by the image pattern (:func:`discover_subjects`, first ``limit``) and their files."""
    found = spec.wrap(lambda: discover_subjects(root, patterns["image"], subjects))[:limit]
    files = {}
    for subject in found:
        paths = spec.wrap(lambda: subject_files(root, patterns, subject))
        files[subject] = SubjectFiles(**{key: str(path) for key, path in paths.items()})
    return found, files


def _folder_manifest(spec: _Spec) -> Manifest:
    """``folder`` adapter: ``path``, patterns ``image`` ``labels`` ``landmarks`` ``mask``, ``subjects``, ``pairs``."""
    root = spec.folder()
    if not isinstance(spec.spec.get("image"), str):
        raise spec.error("image", "is required: the image path inside the folder, with {subject}")
    patterns = {key: spec.spec.get(key) for key in PATTERN_KEYS}
    subjects, files = _pattern_files(spec, root, patterns, spec.spec.get("subjects"))
    # pictures (fundus photographs, ...) are imported as 2D images: green channel, 1 mm pixels
    raw_imports = {
        subject: RawImport(files[subject].image, _picture_shape(Path(files[subject].image)), (1.0, 1.0), "u1")
        for subject in subjects
        if Path(files[subject].image).suffix.lower() in PICTURE_SUFFIXES
    }
    return Manifest(tuple(subjects), files, spec.pairs(subjects), raw_imports)


# neurite-oasis: the OASIS-1 release prepared for VoxelMorph tutorials (Hoopes, Dalca et al.),
# one folder OASIS_OAS1_xxxx_MR1/ per subject holding aligned 3D volumes and one 2D slice each.
OASIS_FOLDER = "OASIS_{subject}_MR1"
OASIS_VARIANTS: dict[str, tuple[str, str]] = {
    "3d": ("aligned_norm.nii.gz", "aligned_seg35.nii.gz"),
    "2d": ("slice_norm.nii.gz", "slice_seg24.nii.gz"),
}


def _oasis_subject_id(name: str) -> str:
    """``OASIS_OAS1_0001_MR1`` -> ``OAS1_0001``; an id already in that form is kept."""
    match = re.fullmatch(OASIS_FOLDER.replace(SUBJECT_FIELD, "(?P<id>.+)"), name)
    return match.group("id") if match else name


def _neurite_oasis_manifest(spec: _Spec) -> Manifest:
    """``neurite-oasis`` adapter: ``path``, ``variant`` (3d|2d), ``subjects``, ``limit``."""
    root = spec.folder()
    image, labels = OASIS_VARIANTS[spec.choice("variant", tuple(OASIS_VARIANTS), "3d")]
    patterns = {"image": f"{OASIS_FOLDER}/{image}", "labels": f"{OASIS_FOLDER}/{labels}"}
    listed = spec.items("subjects", str)
    listed = None if listed is None else [_oasis_subject_id(name) for name in listed]
    subjects, files = _pattern_files(spec, root, patterns, listed, spec.limit())
    return Manifest(tuple(subjects), files)


# DIR-Lab 4DCT (Castillo et al.): ten cases, ten phases T00..T90 each, as headerless little-endian
# int16 volumes (.img) storing HU + 1024, axis i fastest. Shapes and spacings are not in the files;
# this is the published table (dir-lab.com "4DCT" data page; Castillo R et al. 2009, Phys Med Biol
# 54:1849, cases 1-5; Castillo E et al. 2010, Phys Med Biol 55:305, cases 6-10): case -> (shape,
# spacing_mm), shape (n_i, n_j, n_k) = (columns, rows, slices).
DIRLAB_CASES: dict[int, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    1: ((256, 256, 94), (0.97, 0.97, 2.5)),
    2: ((256, 256, 112), (1.16, 1.16, 2.5)),
    3: ((256, 256, 104), (1.15, 1.15, 2.5)),
    4: ((256, 256, 99), (1.13, 1.13, 2.5)),
    5: ((256, 256, 106), (1.10, 1.10, 2.5)),
    6: ((512, 512, 128), (0.97, 0.97, 2.5)),
    7: ((512, 512, 136), (0.97, 0.97, 2.5)),
    8: ((512, 512, 128), (0.97, 0.97, 2.5)),
    9: ((512, 512, 128), (0.97, 0.97, 2.5)),
    10: ((512, 512, 120), (0.97, 0.97, 2.5)),
}
DIRLAB_DTYPE = "<i2"
# Axial slices: columns toward the patient's left, rows toward posterior, slice 0 the most superior
# (ITK direction diag(1, 1, -1), as the headers commonly written for these files state).
DIRLAB_ORIENTATION = "LPI"
DIRLAB_INTERCEPT = -1024.0
DIRLAB_PHASES = tuple(f"T{10 * n:02d}" for n in range(10))
DIRLAB_LANDMARK_PHASES = ("T00", "T50")  # the 300 extreme-phase landmarks
# Published names vary by case: case1_T00_s.img, case2_T00-ssm.img, case6_T00.img; landmarks
# Case1_300_T00_xyz.txt, case6_dirLab300_T00_xyz.txt.
DIRLAB_IMAGE_NAME = re.compile(r"case0*(?P<case>\d+)_(?P<phase>T\d0)(?:[_-][A-Za-z0-9]+)?\.img", re.IGNORECASE)
DIRLAB_LANDMARK_NAME = re.compile(
    r"case0*(?P<case>\d+)_[A-Za-z]*300_(?P<phase>T\d0)_xyz\.txt", re.IGNORECASE
)


def dirlab_subject_id(case: int, phase: str) -> str:
    """Subject id of a DIR-Lab phase volume: ``case1-T00``."""
    return f"case{case}-{phase}"


def _find_by_name(root: Path, pattern: re.Pattern[str], suffix: str) -> dict[tuple[int, str], Path]:
    """Files under ``root`` (recursively) whose name matches ``pattern`` -> {(case, phase): path}.

    Raises InputError when two files match the same (case, phase).
    """
    found: dict[tuple[int, str], Path] = {}
    for path in sorted(root.rglob(f"*{suffix}")):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        key = (int(match.group("case")), match.group("phase").upper())
        if key in found:
            raise InputError(f"{found[key]} and {path} are both case {key[0]} phase {key[1]}; keep one")
        found[key] = path
    return found


def _dirlab_manifest(spec: _Spec) -> Manifest:
    """``dirlab`` adapter: ``path``, ``cases``, ``phases``, ``fixed_phase``, ``landmarks``, ``intercept``."""
    root = spec.folder()
    phases = [phase.upper() for phase in spec.items("phases", str) or list(DIRLAB_LANDMARK_PHASES)]
    for phase in phases:
        if phase not in DIRLAB_PHASES:
            raise spec.error("phases", f"{phase!r} is not allowed; allowed: {', '.join(DIRLAB_PHASES)}")
    fixed_phase = spec.choice("fixed_phase", phases, phases[0])
    need_landmarks = spec.flag("landmarks", True)
    intercept = spec.number("intercept", DIRLAB_INTERCEPT)
    images = spec.wrap(lambda: _find_by_name(root, DIRLAB_IMAGE_NAME, ".img"))
    landmarks = spec.wrap(lambda: _find_by_name(root, DIRLAB_LANDMARK_NAME, ".txt")) if need_landmarks else {}
    cases = spec.items("cases", int)
    if cases is None:
        cases = sorted({case for case, phase in images if phase in phases})
        if not cases:
            raise spec.error("path", f"no DIR-Lab image (caseN_{phases[0]}*.img) found under {root}")
    subjects, files, raw_imports, landmark_imports, pairs = [], {}, {}, {}, []
    for case in cases:
        if case not in DIRLAB_CASES:
            raise spec.error("cases", f"case {case} is not allowed; DIR-Lab 4DCT has cases 1-10")
        shape, spacing = DIRLAB_CASES[case]
        for phase in phases:
            subject = dirlab_subject_id(case, phase)
            if (case, phase) not in images:
                raise spec.error("path", f"no image caseN_{phase}*.img of case {case} under {root}")
            raw = _check_raw_size(images[case, phase], shape, DIRLAB_DTYPE)
            points = landmarks.get((case, phase))
            if need_landmarks and phase in DIRLAB_LANDMARK_PHASES and points is None:
                raise spec.error(
                    "path", f"no landmark file case{case}_300_{phase}_xyz.txt under {root} (or set landmarks: false)"
                )
            subjects.append(subject)
            files[subject] = SubjectFiles(image=str(raw), landmarks=None if points is None else str(points))
            raw_imports[subject] = RawImport(str(raw), shape, spacing, DIRLAB_DTYPE, DIRLAB_ORIENTATION, intercept)
            if points is not None:
                landmark_imports[subject] = LandmarkImport(str(points), "dirlab-xyz")
        fixed = dirlab_subject_id(case, fixed_phase)
        pairs += [(fixed, dirlab_subject_id(case, phase)) for phase in phases if phase != fixed_phase]
    return Manifest(tuple(subjects), files, tuple(pairs) or None, raw_imports, landmark_imports)


# Learn2Reg (Hering et al.): <name>_dataset.json next to imagesTr/, labelsTr/, masksTr/, keypointsTr/.
# "training" (and "test") list per-image entries {image, label, mask, keypoints} with paths relative
# to the JSON's folder ("./imagesTr/NLST_0001_0000.nii.gz"); pair lists hold {fixed, moving} image paths.
LEARN2REG_SPLITS = {"training": "training_paired_images", "validation": "registration_val", "test": "registration_test"}
LEARN2REG_FILE_KEYS = {"label": "labels", "mask": "mask", "keypoints": "landmarks"}
NIFTI_NAME = re.compile(r"(?P<stem>.+?)(?:\.nii\.gz|\.nii|\.mha|\.nrrd)")


def _learn2reg_json(spec: _Spec, root: Path) -> tuple[Path, dict[str, Any]]:
    """The dataset JSON (key ``json``, or the single ``*_dataset.json`` in ``root``) and its content."""
    name = spec.get("json")
    if name is None:
        candidates = sorted(root.glob("*_dataset.json"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise spec.error("json", f"name the dataset JSON in {root} (found *_dataset.json: {found})")
        path = candidates[0]
    elif not isinstance(name, str) or not (root / name).is_file():
        raise spec.error("json", f"{name!r}: file not found in {root}")
    else:
        path = root / name
    return path, read_json_object(path, "Learn2Reg dataset JSON")


def _learn2reg_entries(path: Path, content: dict[str, Any], key: str) -> list[dict[str, str]]:
    """The list ``content[key]`` as dicts of str (a bare path string is ``{"image": path}``)."""
    entries = content.get(key, [])
    if not isinstance(entries, list):
        raise InputError(f"{path}: '{key}' is not a list")
    out = []
    for index, entry in enumerate(entries):
        entry = {"image": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise InputError(f"{path}: '{key}'[{index}] is not an object of file paths")
        out.append(entry)
    return out


def _learn2reg_file(json_path: Path, relative: str) -> Path:
    """A path listed in the JSON, resolved against its folder; it must exist."""
    path = json_path.parent / relative
    if not path.is_file():
        raise InputError(f"{json_path}: lists {relative!r} but {path} does not exist")
    return path


def _learn2reg_manifest(spec: _Spec) -> Manifest:
    """``learn2reg`` adapter: ``path``, ``json``, ``split`` (training|validation|test)."""
    root = spec.folder()
    json_path, content = _learn2reg_json(spec, root)
    split = spec.choice("split", tuple(LEARN2REG_SPLITS), "validation")
    per_image = {
        entry["image"]: entry
        for key in ("training", "test")
        for entry in _learn2reg_entries(json_path, content, key)
        if "image" in entry
    }
    pair_entries = _learn2reg_entries(json_path, content, LEARN2REG_SPLITS[split])
    for index, entry in enumerate(pair_entries):
        if not {"fixed", "moving"} <= set(entry):
            raise InputError(f"{json_path}: '{LEARN2REG_SPLITS[split]}'[{index}] needs 'fixed' and 'moving'")
    if pair_entries:
        images = list(dict.fromkeys(path for entry in pair_entries for path in (entry["fixed"], entry["moving"])))
    elif split == "training":
        images = list(per_image)  # no training pairs listed: every training image, pairs chosen by the study
    else:
        raise spec.error("split", f"{json_path} lists no '{LEARN2REG_SPLITS[split]}' pairs")
    if not images:
        raise InputError(f"{json_path}: lists no images")
    ids: dict[str, str] = {}
    files, landmark_imports = {}, {}
    for relative in images:
        match = NIFTI_NAME.fullmatch(Path(relative).name)
        if match is None:
            raise InputError(f"{json_path}: {relative!r} is not a NIfTI / ITK image path")
        subject = match.group("stem")
        if ids.setdefault(subject, relative) != relative:
            raise InputError(f"{json_path}: {ids[subject]!r} and {relative!r} have the same name {subject!r}")
        entry = per_image.get(relative, {})
        paths = {"image": _learn2reg_file(json_path, relative)}
        paths |= {ours: _learn2reg_file(json_path, entry[theirs]) for theirs, ours in LEARN2REG_FILE_KEYS.items()
                  if theirs in entry}
        files[subject] = SubjectFiles(**{key: str(value) for key, value in paths.items()})
        if "landmarks" in paths:
            landmark_imports[subject] = LandmarkImport(str(paths["landmarks"]), "learn2reg-csv")
    subject_of = {relative: subject for subject, relative in ids.items()}
    pairs = tuple((subject_of[e["fixed"]], subject_of[e["moving"]]) for e in pair_entries) or None
    return Manifest(tuple(ids), files, pairs, {}, landmark_imports)


# FIRE (Hernandez-Matas et al. 2017): Images/<X><NN>_1.jpg and _2.jpg (RGB fundus photographs,
# 2912x2912), "Ground Truth"/control_points_<X><NN>_1_2.txt with one correspondence per line:
# x_1 y_1 x_2 y_2 in pixels (x = column, y = row) of image 1 (fixed) and image 2 (moving).
# Categories: S (large overlap), P (small overlap), A (anatomical changes).
FIRE_CATEGORIES = ("A", "P", "S")
FIRE_POINTS_NAME = re.compile(r"control_points_(?P<pair>[APS]\d+)_1_2\.txt")
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def fire_subject_id(pair: str, image: int) -> str:
    """Subject id of a FIRE image: ``A01-1`` (fixed) or ``A01-2`` (moving)."""
    return f"{pair}-{image}"


def _picture_shape(path: Path) -> tuple[int, ...]:
    """Pixel grid ``(width, height)`` of a picture, read from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as a picture ({exc.__class__.__name__})") from None
    return tuple(int(n) for n in reader.GetSize())


def _fire_manifest(spec: _Spec) -> Manifest:
    """``fire`` adapter: ``path``, ``category`` (A|P|S, all when absent), ``spacing_mm`` (pixel size, 1)."""
    root = spec.folder()
    category = spec.choice("category", FIRE_CATEGORIES, None)
    spacing = spec.number("spacing_mm", 1.0, positive=True)
    images_dir, points_dir = root / "Images", root / "Ground Truth"
    for folder in (images_dir, points_dir):
        if not folder.is_dir():
            raise spec.error("path", f"folder {folder} not found (FIRE has Images/ and 'Ground Truth/')")
    point_files = {
        match.group("pair"): path
        for path in sorted(points_dir.iterdir())
        if (match := FIRE_POINTS_NAME.fullmatch(path.name)) and match.group("pair")[0] in (category or FIRE_CATEGORIES)
    }
    if not point_files:
        raise spec.error("path", f"no control_points_{category or 'X'}NN_1_2.txt in {points_dir}")
    subjects, files, raw_imports, landmark_imports, pairs = [], {}, {}, {}, []
    for pair, points in point_files.items():
        for image, side in ((1, "fire-fixed"), (2, "fire-moving")):
            subject, path = fire_subject_id(pair, image), images_dir / f"{pair}_{image}.jpg"
            if not path.is_file():
                raise spec.error("path", f"image {path} of {points.name} not found")
            shape = _picture_shape(path)
            subjects.append(subject)
            files[subject] = SubjectFiles(image=str(path), landmarks=str(points))
            raw_imports[subject] = RawImport(str(path), shape, (spacing, spacing), "u1")
            landmark_imports[subject] = LandmarkImport(str(points), side)
        pairs.append((fire_subject_id(pair, 1), fire_subject_id(pair, 2)))
    return Manifest(tuple(subjects), files, tuple(pairs), raw_imports, landmark_imports)


MANIFEST_BUILDERS: dict[str, Callable[[_Spec], Manifest]] = {
    "folder": _folder_manifest,
    "neurite-oasis": _neurite_oasis_manifest,
    "dirlab": _dirlab_manifest,
    "learn2reg": _learn2reg_manifest,
    "fire": _fire_manifest,
}


def build_manifest(adapter: str, spec: Mapping[str, Any], base_dir: Path, where: str) -> Manifest:
    """The manifest of a dataset from its config mapping.

    Args:
        adapter: one of :data:`ADAPTERS`.
        spec: the dataset's config mapping; the keys each adapter reads are :data:`ADAPTER_KEYS`
            (other keys are left to the caller).
        base_dir: folder that relative ``path`` values are relative to.
        where: the config location for messages, e.g. ``"datasets.lung"``.

    Nothing is written: raw images and dataset-specific point files are listed in
    ``raw_imports`` / ``landmark_imports`` for the workflow to convert (:func:`import_raw`,
    :func:`import_landmarks`).

    Raises:
        InputError: a message starting ``config key <where>.<key>:`` (or naming the file) for a
        bad value, a missing folder or file, or a dataset without subjects.
    """
    if adapter not in MANIFEST_BUILDERS:
        raise InputError(f"config key {where}.adapter: {adapter!r} is not allowed; allowed: {', '.join(ADAPTERS)}")
    return MANIFEST_BUILDERS[adapter](_Spec(spec, base_dir, where))


# ---------------------------------------------------------------------------------------------
# Imports: raw pixels -> NIfTI, dataset point files -> landmark CSV

AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


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


def _check_raw_size(path: Path, shape: Sequence[int], dtype: str) -> Path:
    """A headerless raw file must hold exactly ``prod(shape)`` values of ``dtype``."""
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputError(
            f"{path}: holds {size} bytes; a {'x'.join(map(str, shape))} volume of {dtype} needs {expected}"
        )
    return path


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

    Raises InputError naming the file: missing, wrong size for shape x dtype, unreadable picture.
    """
    path = Path(raw.raw)
    dtype = _check_raw_description(raw)
    affine = raw_affine(raw.shape, raw.spacing_mm, raw.orientation)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        data = _read_picture(path)
        if data.shape != tuple(raw.shape):
            found, expected = ("x".join(map(str, shape)) for shape in (data.shape, raw.shape))
            raise InputError(f"{path}: is {found} pixels; expected {expected}")
    else:
        _check_raw_size(path, raw.shape, raw.dtype)
        data = np.fromfile(path, dtype=dtype).reshape(tuple(reversed(raw.shape))).transpose()
    if raw.intercept:
        integral = float(raw.intercept).is_integer() and data.dtype.kind in "iu"
        data = data + (np.int32(raw.intercept) if integral else np.float32(raw.intercept))
    return Image(data=np.ascontiguousarray(data), affine=affine, path=str(path))


def import_raw(raw: RawImport, out_path: Path) -> None:
    """Write the image of a :class:`RawImport` (:func:`read_raw`) as NIfTI (or any io suffix), atomically."""
    save_image(read_raw(raw), out_path)


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
