"""RegNet's training data and stage grids (support module of :mod:`registration_core.methods.regnet`).

* The stage grids: an image shrunk by an integer ``factor`` keeps voxel ``k`` of the coarse grid at
  voxel ``factor * k`` of the full one (:func:`shrunk_shape`, :func:`shrink`), and a coarse
  displacement is brought back by :func:`upsample_displacement`.
* Synthetic training pairs in our convention (:func:`synthetic_displacement`, :func:`synthetic_pair`).
* Class-balanced crops (:func:`class_bins_mm`, :func:`displacement_classes`, :func:`balanced_corners`).
* One stage's training crops (:func:`sample_stage_crops`).

Arrays: images (B, 1, *spatial) float32; displacements (B, ndim, *spatial) in voxels of the grid
they live on (fixed point ``x`` -> moving point ``x + u(x)``); numpy fields (ndim, *spatial).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from registration_core.core.io import Image
from registration_core.core.spatial import warp
from registration_core.data import synth
from registration_core.errors import InputError
from registration_core.methods.training import TrainingSet

PAD_MODE = "replicate"
_CONV = {2: F.conv2d, 3: F.conv3d}
_LINEAR = {2: "bilinear", 3: "trilinear"}

SINGLE_SPACING_FACTORS = (1.0, 1.5, 2.0)
"""Single-frequency control spacings, in units of ``grid_spacing_mm``."""
MIXED_SPACING_FACTORS = (2.0, 1.0, 0.5)
"""Mixed-frequency levels, in units of ``grid_spacing_mm``."""
SINGLE_SMOOTH_SIGMA_MM = 5.0


def box(corner: Sequence[int], size: Sequence[int], offset: int = 0) -> tuple[slice, ...]:
    """Index of the box ``[corner + offset, corner + offset + size)`` on (B, C, *spatial) tensors."""
    return (slice(None), slice(None), *[slice(c + offset, c + offset + n) for c, n in zip(corner, size)])


# -- stage grids ------------------------------------------------------------------------------


def shrunk_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """Coarse grid of ``shape`` shrunk by ``factor``: ``(n - 1) // factor + 1`` voxels per axis
    (coarse voxel ``k`` sits on voxel ``factor * k``)."""
    return tuple((int(n) - 1) // factor + 1 for n in shape)


def stage_affine(affine: np.ndarray, ndim: int, factor: int) -> np.ndarray:
    """The voxel -> mm affine of the grid shrunk by ``factor`` (same origin, ``factor`` x the spacing)."""
    coarse = np.array(affine, dtype=np.float64)
    coarse[:3, :ndim] *= factor
    return coarse


def bspline_kernel(ndim: int, factor: int) -> torch.Tensor:
    """RegNet's downsampling kernel: ``beta3(|x|_1 / factor)`` on ``4 factor - 1`` taps per axis
    (cubic B-spline of the L1 distance, as the authors' ``convDownsampleKernel``), summing to 1."""
    taps = np.abs(np.arange(-(2 * factor - 1), 2 * factor, dtype=np.float64)) / factor
    radius = sum(np.meshgrid(*[taps] * ndim, indexing="ij"))
    weights = np.where(radius < 1, 2 / 3 - radius**2 + radius**3 / 2, np.clip(2 - radius, 0, None) ** 3 / 6)
    return torch.from_numpy(weights / weights.sum()).float()


def shrink(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``image`` (B, C, *spatial) -> (B, C, *shrunk_shape) by :func:`bspline_kernel` with stride
    ``factor`` (borders repeated); unchanged for ``factor`` 1."""
    if factor == 1:
        return image
    ndim = image.dim() - 2
    kernel = bspline_kernel(ndim, factor).to(image)[None, None]
    flat = image.reshape(-1, 1, *image.shape[2:])
    padded = F.pad(flat, [2 * factor - 1] * (2 * ndim), mode=PAD_MODE)
    out = _CONV[ndim](padded, kernel, stride=factor)
    return out.reshape(*image.shape[:2], *out.shape[2:])


def upsample_displacement(disp: torch.Tensor, factor: int, shape: Sequence[int]) -> torch.Tensor:
    """Displacement (B, ndim, *shrunk_shape(shape, factor)) in coarse voxels -> (B, ndim, *shape)
    in voxels of the full grid: values times ``factor``, linear interpolation between the coarse
    voxels (``factor * k``), border values repeated beyond the last one."""
    if factor == 1:
        return disp
    size = [factor * (m - 1) + 1 for m in disp.shape[2:]]
    up = F.interpolate(disp * factor, size=size, mode=_LINEAR[disp.dim() - 2], align_corners=True)
    return F.pad(up, [p for n, s in zip(reversed(shape), reversed(size)) for p in (0, n - s)], mode=PAD_MODE)


# -- synthetic pairs --------------------------------------------------------------------------


def synthetic_displacement(
    category: str, image: Image, rng: np.random.Generator, max_disp_mm: float, grid_spacing_mm: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A random displacement (ndim, *shape) float32 in voxels of ``image``'s grid, largest magnitude ``max_disp_mm``.

    ``category``: ``single``, ``mixed`` (regions from ``image``'s edges) or ``respiratory`` (3D;
    ``mask`` bounds the lungs); see :mod:`registration_core.methods.regnet` for the settings.
    """
    if category == "single":
        spacing = grid_spacing_mm * float(rng.choice(SINGLE_SPACING_FACTORS))
        return synth.random_smooth_displacement(
            image.shape, image.spacing, rng, grid_spacing_mm=spacing, max_disp_mm=max_disp_mm,
            smooth_sigma_mm=SINGLE_SMOOTH_SIGMA_MM, diffeomorphic=False,
        )
    if category == "mixed":
        return synth.mixed_frequency_displacement(
            image.shape, image.spacing, rng, grid_spacings_mm=[grid_spacing_mm * f for f in MIXED_SPACING_FACTORS],
            max_disp_mm=max_disp_mm, structure=image.data, diffeomorphic=False,
        )
    if category == "respiratory":
        return synth.respiratory_displacement(image, rng, lung_mask=mask, shift_mm=max_disp_mm)
    raise InputError(f"unknown synthetic deformation category {category!r}; allowed: single, mixed, respiratory")


def synthetic_pair(
    image: torch.Tensor, disp_vox: torch.Tensor, shift_vox: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fixed, moving, target) from an image (1, 1, *S), a displacement (1, ndim, *S) and a shift (ndim,), voxels.

    ``fixed = I o (id + u)``, ``moving = I o (id + s)``, target ``t = u - s`` (1, ndim, *S): the fixed
    point ``x`` corresponds to the moving point ``x + t(x)``.
    """
    shift = shift_vox.to(disp_vox).view(1, -1, *([1] * (disp_vox.dim() - 2))).expand_as(disp_vox)
    return warp(image, disp_vox), warp(image, shift), disp_vox - shift


def window_image(image: Image, corner: Sequence[int], size: Sequence[int]) -> Image:
    """The box ``[corner, corner + size)`` (voxels per axis) of ``image`` with its own affine (same mm positions)."""
    index = tuple(slice(c, c + n) for c, n in zip(corner, size))
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, : len(corner)] @ np.asarray(corner, dtype=np.float64)
    return Image(np.ascontiguousarray(image.data[index]), affine)


def even_corner(rng: np.random.Generator, extent: Sequence[int], size: Sequence[int]) -> list[int]:
    """A random corner with even coordinates so that ``[corner, corner + size)`` fits in ``extent``."""
    return [2 * int(rng.integers(0, (n - m) // 2 + 1)) for n, m in zip(extent, size)]


# -- class-balanced crops ---------------------------------------------------------------------


def class_bins_mm(max_disp_mm: float) -> tuple[float, ...]:
    """Upper edges (mm) of RegNet's displacement classes for fields up to ``max_disp_mm`` (the
    authors' suggested classes): up to 5 mm one class; up to 7 mm ``(2, max)``; up to 15 mm
    ``(1.5, 4, max)``; beyond ``(1.5, 8, max)`` (the authors stop at 25 mm)."""
    if max_disp_mm <= 5:
        return (max_disp_mm,)
    if max_disp_mm <= 7:
        return (2.0, max_disp_mm)
    return (1.5, 4.0 if max_disp_mm <= 15 else 8.0, max_disp_mm)


def displacement_classes(disp_mm: np.ndarray, bins_mm: Sequence[float]) -> np.ndarray:
    """Class (int64, *spatial) of each voxel of a displacement (ndim, *spatial) in mm: ``c`` when its
    largest absolute component lies in ``[bins_mm[c - 1], bins_mm[c])``, class 0 from 0 mm; the last
    class is open above (a voxel beyond the largest edge belongs to it)."""
    largest = np.abs(disp_mm).max(axis=0)
    return np.searchsorted(np.asarray(bins_mm[:-1]), largest, side="right")


def _centre_mask(extent: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Voxels ``v`` (bool, *extent) that are the centre of a crop of ``size`` with an even corner
    ``2 floor((v - size / 2) / 2)`` inside ``extent``."""
    mask = np.ones(tuple(extent), dtype=bool)
    for axis, (n, m) in enumerate(zip(extent, size)):
        corner = 2 * ((np.arange(n) - m // 2) // 2)
        mask &= ((corner >= 0) & (corner <= n - m)).reshape([-1 if k == axis else 1 for k in range(len(extent))])
    return mask


def balanced_corners(
    classes: np.ndarray, n_classes: int, size: Sequence[int], wanted: Sequence[int], rng: np.random.Generator
) -> list[list[int]]:
    """One even crop corner per entry of ``wanted`` (a class in ``range(n_classes)`` of ``classes``,
    (*extent) int): the crop of ``size`` voxels is centred on a voxel of that class drawn uniformly
    among the possible centres (:func:`_centre_mask`). A class without such a voxel is replaced by
    the next class (cyclically) that has one; ``extent`` must hold a crop."""
    valid = _centre_mask(classes.shape, size)
    members = [np.flatnonzero(valid & (classes == c)) for c in range(n_classes)]
    corners = []
    for c in wanted:
        chosen = next(members[(c + k) % n_classes] for k in range(n_classes) if members[(c + k) % n_classes].size)
        centre = np.unravel_index(chosen[int(rng.integers(chosen.size))], classes.shape)
        corners.append([2 * ((int(v) - m // 2) // 2) for v, m in zip(centre, size)])
    return corners


# -- one stage's training crops ---------------------------------------------------------------


def sample_stage_crops(
    data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], factor: int, max_disp_mm: float, margin: int
) -> dict[str, torch.Tensor]:
    """``batch_size`` synthetic pairs x ``patches_per_pair`` crops on the training images shrunk by
    ``factor``: ``fixed``/``moving`` (N, 1, *(output_patch + 2 margin)), ``disp`` (N, ndim,
    *output_patch) in voxels of the stage grid, ``spacing_mm`` (ndim,) of that grid.

    Each pair's field (largest magnitude in ``[max_disp_mm / 2, max_disp_mm]``) lives on a random
    window of at most ``field_window`` stage voxels per axis (the whole image when 0), is 0 around
    it, and is applied to the window and its ``margin``-wide surroundings (images padded by repeating
    their border values, as at registration). ``balance=classes`` centres the crops on voxels of the
    displacement classes of :func:`class_bins_mm` in turn (:func:`balanced_corners`).
    """
    ndim = len(data.shape)
    shape = shrunk_shape(data.shape, factor)
    affine = stage_affine(data.reference.affine, ndim, factor)
    spacing = torch.tensor([s * factor for s in data.reference.spacing], dtype=torch.float32)
    categories = params["synth"].split("+")
    window = [min(n, params["field_window"] or n) for n in shape]
    size = [params["output_patch"]] * ndim
    bins = class_bins_mm(max_disp_mm)
    next_class = int(rng.integers(len(bins))) if params["balance"] == "classes" else 0
    inputs, targets = [], []
    for _ in range(params["batch_size"]):
        index = int(rng.integers(len(data)))
        image = Image(shrink(data.images[index : index + 1], factor)[0, 0].numpy(), affine)
        corner = even_corner(rng, shape, window)
        category = categories[int(rng.integers(len(categories)))]
        max_disp = max_disp_mm * float(rng.uniform(0.5, 1.0))
        labels = None if data.labels is None else data.labels[index, 0].numpy()[(slice(None, None, factor),) * ndim]
        mask = None if labels is None else labels[box(corner, window)[2:]] > 0
        mask = mask if mask is not None and mask.any() else None  # a window beside the lungs: its whole extent
        disp = synthetic_displacement(category, window_image(image, corner, window), rng, max_disp, params["grid_spacing_mm"], mask)
        disp_region = F.pad(torch.from_numpy(disp)[None], [margin] * (2 * ndim))  # 0 around the window
        padded = F.pad(torch.from_numpy(image.data)[None, None], [margin] * (2 * ndim), mode=PAD_MODE)
        shift = torch.from_numpy(rng.uniform(-0.5, 0.5, size=ndim))
        fixed, moving, target = synthetic_pair(padded[box(corner, [n + 2 * margin for n in window])], disp_region, shift)
        pair = torch.cat([fixed, moving], dim=1)
        noise_scale = params["noise_std"] * float(data.images[index].max() - data.images[index].min())
        pair = pair + noise_scale * torch.from_numpy(rng.standard_normal(pair.shape).astype(np.float32))
        if params["balance"] == "classes":
            target_mm = (target[box([margin] * ndim, window)][0] * spacing.view(-1, *([1] * ndim))).numpy()
            wanted = [(next_class + k) % len(bins) for k in range(params["patches_per_pair"])]
            next_class = (next_class + params["patches_per_pair"]) % len(bins)
            crops = balanced_corners(displacement_classes(target_mm, bins), len(bins), size, wanted, rng)
        else:
            crops = [even_corner(rng, window, size) for _ in range(params["patches_per_pair"])]
        for crop in crops:
            inputs.append(pair[box(crop, [n + 2 * margin for n in size])])
            targets.append(target[box(crop, size, offset=margin)])
    crops_t = torch.cat(inputs)
    return {"fixed": crops_t[:, :1], "moving": crops_t[:, 1:], "disp": torch.cat(targets), "spacing_mm": spacing}
