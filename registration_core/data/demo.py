"""The embedded demo data: real MNI152 anatomy and synthetic subjects deformed from it.

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

The study's ``demo`` adapter (keys: :mod:`registration_core.data.adapters.demo`) writes its
subjects with :func:`write_demo_subject` (``demo-subject`` command).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from registration_core.core import spatial
from registration_core.core.io import Image, save_image
from registration_core.data import synth
from registration_core.errors import InputError

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
