"""Known-truth registration pairs: a real image, a synthetic motion, and the deformed copy.

Conventions (those of :mod:`registration_core.core.spatial`)
--------------------------------------------------------
* The real image is the **fixed** image (the atlas); arrays are in array index order ``(i, j[, k])``.
* ``disp_vox`` (ndim, *spatial) is the true displacement in voxels of the fixed grid: a fixed point
  ``p`` corresponds to the moving point ``p + d(p)``, and ``moving o (id + d)`` equals the fixed
  image up to interpolation and noise. A registration that is exactly right returns ``d``.
* Landmarks are (N, ndim) voxel coordinates on the shared grid: ``moving = fixed + d(fixed)``,
  exact by construction (the fixed landmarks lie on voxel centres, where ``d`` is given).

Construction (:func:`make_truth_pair`; :func:`deform_with_truth` for a field of your own): ``d``
is drawn directly on the fixed grid (respiratory, single- or mixed-frequency motion from
:mod:`registration_core.data.synth`, scaled to a maximum magnitude),
its inverse ``e`` (``(id + d) o (id + e) = id``) is found by fixed-point iteration
(:func:`invert_displacement`, residual reported), and the moving image is
``fixed o (id + e)`` (cubic B-spline interpolation) plus Gaussian noise; moving labels and mask
are ``labels o (id + e)`` with nearest-neighbour interpolation.

Files (:func:`write_truth_pair`, the ``synth-pair`` command): ``fixed.nii.gz``,
``moving.nii.gz``, ``truth_displacement.nii.gz`` (ITK convention, mm LPS, like a registration's
``displacement.nii.gz``), ``fixed_landmarks.csv``, ``moving_landmarks.csv``, ``truth.json``
(motion, seed, achieved maximum, inversion residual, min det J); with labels
``fixed_labels.nii.gz`` and ``moving_labels.nii.gz``; with a mask ``mask.nii.gz`` (fixed grid, for
``evaluate --mask``) and ``moving_mask.nii.gz``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from registration_core.core import io, spatial
from registration_core.core.outputs import staged_folder
from registration_core.data import synth
from registration_core.data.landmarks import detect_landmarks
from registration_core.errors import InputError
from registration_core.layout import TRUTH_FILES, truth_file

Motion = Literal["respiratory", "respiratory-inhale", "single", "mixed"]
MOTIONS: tuple[str, ...] = ("respiratory", "respiratory-inhale", "single", "mixed")
SKIMAGE_RETINA = "skimage:retina"

# Fixed-point inversion stops when the largest residual |e + d o (id + e)| falls below this (voxels).
_INVERSION_TOL_VOX = 1e-3
_INVERSION_MAX_ITERATIONS = 100
# A pair is refused when the inverse is worse than this (voxels): the moving image would be wrong.
_INVERSION_MAX_RESIDUAL_VOX = 0.05
# Nominal respiratory amplitudes (synth.respiratory_displacement's defaults), scaled together.
_NOMINAL_SHIFT_MM, _NOMINAL_CONTRACTION, _NOMINAL_LOCAL_MM = 30.0, 0.12, 3.0
# Landmarks are at least this many voxels (of the coarsest axis) apart unless told otherwise.
_DEFAULT_MIN_DISTANCE_VOX = 5.0


@dataclass(frozen=True)
class TruthPair:
    """A fixed image, its deformed copy and the exact correspondence between them.

    Attributes:
        fixed: the real image (the atlas).
        moving: ``fixed o (id + d)^-1`` plus noise, on the fixed grid (float32).
        disp_vox: (ndim, *spatial) float32 true displacement in voxels (fixed ``p`` -> moving ``p + d(p)``).
        fixed_landmarks, moving_landmarks: (N, ndim) voxel coordinates, ``moving = fixed + d(fixed)``.
        fixed_labels, moving_labels: label maps (moving: nearest), or None.
        mask, moving_mask: the fixed mask and its deformed copy, or None.
        info: JSON-ready facts: motion, seed, max_disp_mm (achieved, inside the mask when given),
            noise_std, inversion_residual_vox (largest), inversion_iterations, detj_min, n_landmarks.
    """

    fixed: io.Image
    moving: io.Image
    disp_vox: np.ndarray
    fixed_landmarks: np.ndarray
    moving_landmarks: np.ndarray
    fixed_labels: io.Image | None
    moving_labels: io.Image | None
    mask: io.Image | None
    moving_mask: io.Image | None
    info: dict[str, Any]


# --------------------------------------------------------------------------- fields


def invert_displacement(disp_vox: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Inverse ``e`` of the map ``x -> x + d(x)`` on the same grid, by fixed-point iteration.

    ``e_0 = -d``, ``e_{k+1}(y) = -d(y + e_k(y))`` (``d`` interpolated linearly, border values
    outside the grid) until ``max |e + d o (id + e)| < 1e-3`` voxel or 100 iterations. It converges
    when ``d`` is a contraction (largest gradient below 1), as for the smooth fields made here.
    Computed in float32 (coordinates resolve ~1e-5 voxel on grids of a few hundred voxels).

    Args:
        disp_vox: (ndim, *spatial) displacement in voxels.

    Returns:
        ``(e, residual, iterations)``: float64 (ndim, *spatial) inverse displacement in voxels; the
        largest residual ``|(id + d) o (id + e) - id|`` in voxels; iterations done.
    """
    d = torch.from_numpy(np.ascontiguousarray(disp_vox, dtype=np.float32))[None]
    inverse = -d
    residual = math.inf
    iterations = 0
    for iterations in range(1, _INVERSION_MAX_ITERATIONS + 1):
        sampled = spatial.warp(d, inverse)
        residual = float(torch.linalg.vector_norm(inverse + sampled, dim=1).max())
        if residual < _INVERSION_TOL_VOX:
            break
        inverse = -sampled
    return inverse[0].numpy().astype(np.float64), residual, iterations


def _resample_at(array: np.ndarray, points_vox: np.ndarray, order: int) -> np.ndarray:
    """``array`` (*spatial) sampled at voxel points (ndim, *spatial): order 3 cubic B-spline, 0 nearest."""
    return ndimage.map_coordinates(array, points_vox, order=order, mode="nearest")


def _scaled_motion(
    fixed: io.Image, mask: io.Image | None, motion: str, max_disp_mm: float, rng: np.random.Generator,
    grid_spacing_mm: float,
) -> np.ndarray:
    """The true displacement (ndim, *spatial) float64 voxels with largest magnitude ``max_disp_mm``.

    The maximum is taken inside the mask when one is given (respiratory motion is largest below
    the diaphragm, outside the lungs), else over the whole grid. Respiratory motion is drawn with
    its nominal amplitudes (30 mm shift, 0.12 contraction, 3 mm local field) times
    ``max_disp_mm / 30``, so its fold check applies near the final size, then rescaled exactly.
    """
    if motion.startswith("respiratory"):
        if fixed.ndim != 3:
            raise InputError(f"motion '{motion}' needs a 3D image, got {fixed.ndim}D; use 'single'")
        ratio = max_disp_mm / _NOMINAL_SHIFT_MM
        disp = synth.respiratory_displacement(
            fixed, rng, lung_mask=None if mask is None else mask.data, shift_mm=_NOMINAL_SHIFT_MM * ratio,
            contraction=_NOMINAL_CONTRACTION * ratio, local_max_disp_mm=_NOMINAL_LOCAL_MM * ratio,
        )
        if motion == "respiratory-inhale":
            disp = -disp
    elif motion == "mixed":
        disp = synth.mixed_frequency_displacement(
            fixed.shape, fixed.spacing, rng, max_disp_mm=max_disp_mm, structure=np.asarray(fixed.data)
        )
    else:
        disp = synth.random_smooth_displacement(
            fixed.shape, fixed.spacing, rng, grid_spacing_mm=grid_spacing_mm, max_disp_mm=max_disp_mm
        )
    magnitude = synth.magnitude_mm(disp, fixed.spacing)
    inside = magnitude if mask is None else magnitude[mask.data > 0]
    return disp.astype(np.float64) * (max_disp_mm / float(inside.max()))


def _check_inputs(
    fixed: io.Image, mask: io.Image | None, labels: io.Image | None, motion: str, max_disp_mm: float,
    noise_std: float, n_landmarks: int,
) -> None:
    """Validate the arguments of :func:`make_truth_pair` (InputError naming the parameter)."""
    if motion not in MOTIONS:
        raise InputError(f"motion {motion!r} is not allowed; allowed: {', '.join(MOTIONS)}")
    if not math.isfinite(max_disp_mm) or max_disp_mm <= 0:
        raise InputError(f"max_disp_mm={max_disp_mm} is not allowed; expected a number > 0 (mm)")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise InputError(f"noise_std={noise_std} is not allowed; expected a number >= 0 (fraction of the range)")
    if isinstance(n_landmarks, bool) or int(n_landmarks) != n_landmarks or n_landmarks < 0:
        raise InputError(f"n_landmarks={n_landmarks} is not allowed; expected an integer >= 0")
    if not np.all(np.isfinite(fixed.data)) or float(np.ptp(fixed.data)) == 0:
        raise InputError(f"{fixed.path or 'fixed image'}: must be finite and not constant")
    for name, other in (("mask", mask), ("labels", labels)):
        if other is not None and not other.same_grid(fixed, atol=1e-3):
            raise InputError(f"{other.path or name}: {name} not on the grid of {fixed.path or 'the fixed image'}")
    if mask is not None and not np.any(mask.data > 0):
        raise InputError(f"{mask.path or 'mask'}: the mask is empty")


# --------------------------------------------------------------------------- pair


def deform_with_truth(
    fixed: io.Image,
    disp_vox: np.ndarray,
    rng: np.random.Generator,
    mask: io.Image | None = None,
    labels: io.Image | None = None,
    noise_std: float = 0.0,
    n_landmarks: int = 0,
    min_distance_mm: float | None = None,
) -> TruthPair:
    """The pair whose true displacement is the given ``disp_vox``: moving = ``fixed o (id + d)^-1`` + noise.

    Args:
        fixed: the real image (2D or 3D).
        disp_vox: (ndim, *spatial) true displacement in voxels of the fixed grid; must not fold.
        rng: draws the noise.
        mask, labels: label maps on the fixed grid (or None), deformed nearest; the mask bounds the
            landmarks and the reported maximum.
        noise_std: Gaussian noise as a fraction of the fixed image's range (max - min).
        n_landmarks: landmarks wanted (0: none); min_distance_mm: their smallest distance (mm),
            default 5 voxels of the coarsest axis.

    Returns:
        The :class:`TruthPair`; ``info`` without motion and seed. Landmarks whose moving point
        leaves the grid are dropped.

    Raises:
        InputError: a field of another shape, one that folds (min det J <= 0) or one whose inverse
            leaves a residual above 0.05 voxel.
    """
    disp = np.asarray(disp_vox, dtype=np.float64)
    if disp.shape != (fixed.ndim, *fixed.shape) or not np.all(np.isfinite(disp)):
        expected = (fixed.ndim, *fixed.shape)
        raise InputError(f"disp_vox has shape {disp.shape}; expected finite values of shape {expected}")
    detj_min = synth.min_jacobian_determinant(disp)
    if detj_min <= 0:
        raise InputError(f"the true displacement folds (min det J {detj_min:.3f}); lower max_disp_mm")
    inverse, residual, iterations = invert_displacement(disp)
    if residual > _INVERSION_MAX_RESIDUAL_VOX:
        raise InputError(f"the true displacement is too steep to invert (residual {residual:.3f} voxel); lower it")
    points = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in fixed.shape], indexing="ij"))
    points += inverse
    data = np.asarray(fixed.data, dtype=np.float64)
    low, high = float(data.min()), float(data.max())
    moving = np.clip(_resample_at(data, points, order=3), low, high)
    moving += rng.normal(0.0, noise_std * (high - low), size=moving.shape)

    def deformed(label_map: io.Image | None) -> io.Image | None:
        return None if label_map is None else label_map.with_data(_resample_at(label_map.data, points, order=0))

    fixed_points = np.zeros((0, fixed.ndim))
    moving_points = fixed_points
    if n_landmarks > 0:
        distance = _DEFAULT_MIN_DISTANCE_VOX * max(fixed.spacing) if min_distance_mm is None else min_distance_mm
        fixed_points = detect_landmarks(fixed, mask, int(n_landmarks), distance)
        moving_points = fixed_points + spatial.sample_displacement_at(disp, fixed_points)
    on_grid = np.all((moving_points >= -0.5) & (moving_points <= np.asarray(fixed.shape) - 0.5), axis=1)
    magnitude = synth.magnitude_mm(disp, fixed.spacing)
    info = {
        "max_disp_mm": float(magnitude.max() if mask is None else magnitude[mask.data > 0].max()),
        "noise_std": float(noise_std),
        "inversion_residual_vox": residual,
        "inversion_iterations": iterations,
        "detj_min": detj_min,
        "n_landmarks": int(on_grid.sum()),
        "landmarks_dropped": int((~on_grid).sum()),
        "conventions": "fixed point p corresponds to moving point p + d(p); moving o (id + d) ~ fixed",
    }
    return TruthPair(
        fixed=fixed,
        moving=fixed.with_data(moving.astype(np.float32)),
        disp_vox=disp.astype(np.float32),
        fixed_landmarks=fixed_points[on_grid],
        moving_landmarks=moving_points[on_grid],
        fixed_labels=labels,
        moving_labels=deformed(labels),
        mask=mask,
        moving_mask=deformed(mask),
        info=info,
    )


def make_truth_pair(
    fixed: io.Image,
    mask: io.Image | None = None,
    motion: Motion = "respiratory",
    max_disp_mm: float = 15.0,
    noise_std: float = 0.01,
    seed: int = 0,
    n_landmarks: int = 150,
    labels: io.Image | None = None,
    min_distance_mm: float | None = None,
    grid_spacing_mm: float = 40.0,
) -> TruthPair:
    """Deform a real image by a random known motion; see the module docstring for the construction.

    Args:
        fixed: the real image (2D or 3D; respiratory motion needs 3D), e.g. a CT clipped and
            normalised to [0, 1].
        mask: label map on the fixed grid (lungs: 1 right, 2 left) or None. It bounds the
            respiratory motion, the maximum magnitude and the landmarks.
        motion: "respiratory" (:func:`registration_core.data.synth.respiratory_displacement`: the fixed
            image is the inhale phase, the moving one exhales: diaphragm up, chest narrower),
            "respiratory-inhale" (that field negated: the fixed image is the exhale phase, the
            moving one inhales; its content below the diaphragm then comes from inside the field
            of view, which suits CTs cut just below the lungs), "single"
            (:func:`registration_core.data.synth.random_smooth_displacement`, a diffeomorphic
            single-frequency field with control spacing ``grid_spacing_mm``) or "mixed"
            (:func:`registration_core.data.synth.mixed_frequency_displacement` with its default levels,
            finer motion near the fixed image's strongest edges).
        max_disp_mm: largest true displacement (mm), inside the mask when given.
        noise_std: Gaussian noise added to the moving image, as a fraction of the fixed image's
            intensity range (max - min).
        seed: seeds the motion and the noise (same seed, same pair).
        n_landmarks: landmarks wanted (0: none); see :func:`registration_core.data.landmarks.detect_landmarks`.
        labels: label map of the fixed image, deformed with the image (nearest).
        min_distance_mm: smallest landmark distance (mm); default 5 voxels of the coarsest axis.
        grid_spacing_mm: control point spacing of the single-frequency field (mm).

    Returns:
        The :class:`TruthPair` of :func:`deform_with_truth`, ``info`` with ``motion`` and ``seed``.

    Raises:
        InputError: bad arguments, a mask/labels on another grid, or a motion that folds (det J <= 0).
    """
    _check_inputs(fixed, mask, labels, motion, max_disp_mm, noise_std, n_landmarks)
    rng = np.random.default_rng(seed)
    disp = _scaled_motion(fixed, mask, motion, max_disp_mm, rng, grid_spacing_mm)
    pair = deform_with_truth(fixed, disp, rng, mask, labels, noise_std, n_landmarks, min_distance_mm)
    return replace(pair, info={"motion": motion, "seed": int(seed), **pair.info})


# --------------------------------------------------------------------------- fundus example


def retina_image(size: int = 256) -> tuple[io.Image, io.Image]:
    """scikit-image's fundus photograph as a 2D image and its field-of-view mask, 1 mm nominal pixels.

    The green channel (best vessel contrast) is downsampled with anti-aliasing to ``size x size``
    and scaled to [0, 1]; the mask (uint8, 1 inside) is the circular field of view (red channel
    above 10 % of its maximum). Arrays are (row, column) = (i, j); the affine is the identity.
    """
    from skimage import data as skdata
    from skimage.transform import resize

    if isinstance(size, bool) or int(size) != size or not 32 <= size <= 1411:
        raise InputError(f"size={size} is not allowed; expected an integer in [32, 1411] (pixels)")
    rgb = skdata.retina().astype(np.float64) / 255.0
    green = resize(rgb[..., 1], (size, size), anti_aliasing=True)
    red = resize(rgb[..., 0], (size, size), anti_aliasing=True)
    green = (green - green.min()) / (green.max() - green.min())
    field_of_view = ndimage.binary_fill_holes(red > 0.1 * red.max())
    affine = np.eye(4)
    return io.Image(green.astype(np.float32), affine), io.Image(field_of_view.astype(np.uint8), affine)


def retina_truth_pair(
    size: int = 256, max_disp_mm: float = 8.0, noise_std: float = 0.01, seed: int = 0, n_landmarks: int = 100
) -> TruthPair:
    """A 2D known-truth pair on the fundus image of :func:`retina_image`.

    Single-frequency motion (control spacing ``size / 4`` px) of largest magnitude ``max_disp_mm``
    (px = mm here) inside the field of view; landmarks (vessel crossings and bifurcations) at
    least ``size / 32`` px apart. Other arguments as in :func:`make_truth_pair`.
    """
    image, field_of_view = retina_image(size)
    return make_truth_pair(
        image, field_of_view, "single", max_disp_mm, noise_std, seed, n_landmarks,
        min_distance_mm=size / 32, grid_spacing_mm=size / 4,
    )


# --------------------------------------------------------------------------- files


def write_truth_pair(pair: TruthPair, out_dir: Path) -> list[Path]:
    """Write the pair's files (module docstring) into ``out_dir``; all or nothing, a previous run's files
    removed first (:func:`registration_core.core.outputs.staged_folder`). Returns the paths."""
    out_dir = Path(out_dir)
    images = {
        "fixed": pair.fixed,
        "moving": pair.moving,
        "fixed_labels": pair.fixed_labels,
        "moving_labels": pair.moving_labels,
        "mask": pair.mask,
        "moving_mask": pair.moving_mask,
    }
    written: list[str] = []
    with staged_folder(out_dir, TRUTH_FILES.values(), TRUTH_FILES["info"]) as stage:
        for key, image in images.items():
            if image is not None:
                io.save_image(image, truth_file(stage, key))
                written.append(key)
        io.save_displacement(pair.disp_vox, pair.fixed, truth_file(stage, "truth_displacement"))
        written.append("truth_displacement")
        landmarks = {"fixed_landmarks": pair.fixed_landmarks, "moving_landmarks": pair.moving_landmarks}
        for key, points in landmarks.items() if len(pair.fixed_landmarks) else ():
            io.save_landmarks(points, pair.fixed, truth_file(stage, key))
            written.append(key)
        io.write_json(pair.info, truth_file(stage, "info"))
        written.append("info")
    return [truth_file(out_dir, key) for key in written]


def synth_pair(
    image: str | Path,
    out_dir: Path,
    mask: Path | None = None,
    labels: Path | None = None,
    motion: Motion = "respiratory",
    max_disp_mm: float = 15.0,
    noise_std: float = 0.01,
    seed: int = 0,
    n_landmarks: int = 150,
    min_distance_mm: float | None = None,
) -> TruthPair:
    """The ``synth-pair`` command: read the inputs, :func:`make_truth_pair`, :func:`write_truth_pair`.

    ``image`` is a path, or ``"skimage:retina"`` for the 256 x 256 fundus image of
    :func:`retina_image` (its field of view is the mask unless ``mask`` is given; use ``motion="single"``).
    """
    if str(image) == SKIMAGE_RETINA:
        fixed, field_of_view = retina_image()
        mask_image = io.load_image(mask, "labels") if mask is not None else field_of_view
    else:
        fixed = io.load_image(image, "image")
        mask_image = io.load_image(mask, "labels") if mask is not None else None
    label_image = io.load_image(labels, "labels") if labels is not None else None
    pair = make_truth_pair(
        fixed, mask_image, motion, max_disp_mm, noise_std, seed, n_landmarks, label_image, min_distance_mm
    )
    write_truth_pair(pair, out_dir)
    return pair
