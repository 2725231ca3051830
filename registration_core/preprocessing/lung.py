"""Lung masking of thorax CT (Hounsfield units) with SimpleITK and scipy.ndimage.

Arrays are in array index order ``(i, j, k)``; radii and distances are in mm and converted
to voxels per axis with the image's spacing. The pipeline of :func:`lung_mask`:

1. body: voxels above ``body_hu``, largest connected component, filled convex hull of each
   slice across the axial axis (the array axis closest to S), so that outside air and air
   connected to the array border around the body are excluded (hole filling would lose a
   lung that the field of view cuts);
2. candidates: voxels below ``lung_hu`` inside the body (lungs, airways, bowel gas);
3. seeds: the candidates eroded by ``airway_radius_mm`` (this cuts the trachea and main
   bronchi from the lungs); the one or two largest eroded components holding at least
   ``min_lung_fraction`` of the largest are kept; a single merged component (lungs
   touching in front of the heart) is split at the mid-sagittal plane, the plane of least
   lung area near the centre of the body along the left-right axis;
4. reconstruction: each candidate voxel within ``airway_radius_mm`` (+ one voxel) of a
   seed gets that seed's label (nearest seed), which undoes the erosion but leaves out the
   trachea and thin airways;
5. closing by ``closing_radius_mm`` and hole filling (slice by slice, axial) per lung, so
   vessels inside the lungs are part of the mask.

Labels of the result: 0 background, 1 right lung, 2 left lung (RAS+ x towards the right;
the side with the larger RAS x is the right lung).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull

from registration_core.core.io import Image, image_to_sitk
from registration_core.errors import InputError

RIGHT_LUNG, LEFT_LUNG = 1, 2


def _name(image: Image) -> str:
    """How an image is named in error messages."""
    return image.path or "image"


def _axis_towards(image: Image, world_axis: int) -> int:
    """The array axis whose direction is closest to RAS axis ``world_axis`` (0 = R, 1 = A, 2 = S)."""
    directions = np.abs(image.affine[:3, :3]) / np.asarray(image.spacing)
    return int(np.argmax(directions[world_axis]))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (empty stays empty)."""
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == int(np.argmax(sizes)) + 1


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill holes of a boolean mask in every 2D slice across ``axis``."""
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, axis)


def _radius_vox(image: Image, radius_mm: float) -> list[int]:
    """A radius in mm as whole voxels per array axis (at least 1)."""
    return [max(1, int(round(radius_mm / s))) for s in image.spacing]


def _morphology(image: Image, mask: np.ndarray, radius_mm: float, operation: str) -> np.ndarray:
    """Binary erosion, dilation or closing (ball of ``radius_mm``) of a mask on ``image``'s grid."""
    itk_mask = image_to_sitk(image.with_data(mask.astype(np.uint8)))
    radius = _radius_vox(image, radius_mm)
    filters = {
        "erode": lambda m: sitk.BinaryErode(m, radius, sitk.sitkBall, 0, 1, False),
        "close": lambda m: sitk.BinaryMorphologicalClosing(m, radius, sitk.sitkBall, 1, True),
    }
    return sitk.GetArrayFromImage(filters[operation](itk_mask)).transpose().astype(bool)


def _convex_hull(plane: np.ndarray) -> np.ndarray:
    """Filled convex hull of the True pixels of a 2D boolean array (empty stays empty).

    A pixel (i, j) is inside when ``a i + b j + d <= 0.5`` for every hull facet ``(a, b, d)``;
    solved for j per row, which gives one interval of columns per row.
    """
    points = np.argwhere(plane)
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return plane.copy()
    a, b, d = ConvexHull(points).equations.T
    rhs = 0.5 - d - a * np.arange(plane.shape[0])[:, None]  # (rows, facets): b j <= rhs
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b
    lower = np.where(b < 0, bound, -np.inf).max(axis=1)
    upper = np.where(b > 0, bound, np.inf).min(axis=1)
    row_inside = np.where(b == 0, rhs >= 0, True).all(axis=1)
    columns = np.arange(plane.shape[1])
    return row_inside[:, None] & (columns >= lower[:, None]) & (columns <= upper[:, None])


def _box(mask: np.ndarray, pad: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of the True voxels of a non-empty mask, grown by ``pad`` voxels per axis (clipped to the array)."""
    box = []
    for axis, (size, margin) in enumerate(zip(mask.shape, pad)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, size)))
    return tuple(box)


def body_mask(image: Image, body_hu: float = -500.0) -> np.ndarray:
    """Boolean body mask (shape of ``image``): largest component above ``body_hu``, convex hull per axial slice.

    The hull (rather than hole filling) keeps the lungs inside the body where the field of
    view cuts through them (a lung touching the array border is not a closed hole).
    """
    body = _largest_component(image.data > body_hu)
    axial = _axis_towards(image, 2)
    hulls = [_convex_hull(plane) for plane in np.moveaxis(body, axial, 0)]
    return np.moveaxis(np.stack(hulls), 0, axial)


def _split_sagittal(image: Image, component: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Split one merged lung component into two labels at the plane of least area near the body's centre."""
    lr_axis = _axis_towards(image, 0)
    other = tuple(a for a in range(image.ndim) if a != lr_axis)
    area = component.sum(axis=other)
    extent = np.flatnonzero(body.any(axis=other))
    centre, half = (extent[0] + extent[-1]) / 2, (extent[-1] - extent[0]) / 6
    window = np.arange(int(max(centre - half, 0)), int(min(centre + half, len(area) - 1)) + 1)
    cut = int(window[np.argmin(area[window])])
    position = np.arange(component.shape[lr_axis]).reshape([-1 if a == lr_axis else 1 for a in range(image.ndim)])
    return np.where(component, np.where(position <= cut, 1, 2), 0)


def _seeds(image: Image, candidates: np.ndarray, body: np.ndarray, radius_mm: float, min_fraction: float) -> np.ndarray:
    """Eroded candidates -> int labels 1..2 of the lung seeds (before the right/left naming)."""
    labelled, count = ndimage.label(_morphology(image, candidates, radius_mm, "erode"))
    if count == 0:
        raise InputError(f"lung_mask: {_name(image)} has no low-HU region inside the body; is it a thorax CT in HU?")
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    kept = [int(c) + 1 for c in order[:2] if sizes[c] >= min_fraction * sizes[order[0]]]
    if len(kept) == 1:
        return _split_sagittal(image, labelled == kept[0], body)
    return np.select([labelled == kept[0], labelled == kept[1]], [1, 2], 0)


def _reconstruct(image: Image, candidates: np.ndarray, seeds: np.ndarray, radius_mm: float) -> np.ndarray:
    """Label each candidate voxel within ``radius_mm`` (+ one voxel) of a seed with its nearest seed's label.

    Computed in the candidates' bounding box, which holds every seed (seeds are eroded candidates).
    """
    box = _box(candidates, [1] * image.ndim)
    distance, nearest = ndimage.distance_transform_edt(seeds[box] == 0, sampling=image.spacing, return_indices=True)
    reach = radius_mm + max(image.spacing)
    labels = seeds[box][tuple(nearest)]
    lungs = np.zeros_like(seeds)
    lungs[box] = np.where(candidates[box] & (distance <= reach), labels, 0)
    return lungs


def _close_and_fill(image: Image, lung: np.ndarray, radius_mm: float) -> np.ndarray:
    """Closing (ball of ``radius_mm``) then axial hole filling of one lung, in its bounding box grown
    by the radius and one voxel (exactly what the whole volume would give: the closing cannot grow
    further, and the box's border ring stays empty)."""
    if not lung.any():
        return lung
    box = _box(lung, [r + 1 for r in _radius_vox(image, radius_mm)])
    origin = [s.start for s in box]
    sub_affine = image.affine.copy()
    sub_affine[:3, 3] = image.affine[:3, :3] @ origin + image.affine[:3, 3]
    sub_image = Image(lung[box].astype(np.uint8), sub_affine, None)
    closed = np.zeros_like(lung)
    closed[box] = _fill_slices(_morphology(sub_image, lung[box], radius_mm, "close"), _axis_towards(image, 2))
    return closed


def _name_sides(image: Image, lungs: np.ndarray) -> np.ndarray:
    """Relabel so that 1 = right lung (larger mean RAS x), 2 = left lung."""
    centres_x = []
    for label in (1, 2):
        index = np.argwhere(lungs == label).mean(axis=0)
        centres_x.append(float(image.affine[0, : image.ndim] @ index))
    if centres_x[0] >= centres_x[1]:
        return lungs
    return np.select([lungs == 1, lungs == 2], [LEFT_LUNG, RIGHT_LUNG], 0)


def lung_mask(
    image: Image,
    body_hu: float = -500.0,
    lung_hu: float = -400.0,
    airway_radius_mm: float = 6.0,
    closing_radius_mm: float = 4.0,
    min_lung_fraction: float = 0.1,
) -> Image:
    """Lung mask of a 3D thorax CT in HU: uint8 labels 0 background, 1 right lung, 2 left lung.

    Args:
        image: 3D CT in Hounsfield units (air about -1000, soft tissue about 0..100).
        body_hu: body threshold (HU); the body is the largest component above it.
        lung_hu: lung threshold (HU); lung parenchyma lies below it.
        airway_radius_mm: erosion radius that separates the trachea / main bronchi from the
            lungs; tubes thinner than about twice this are left out of the mask.
        closing_radius_mm: radius of the final closing of each lung (smooths the border,
            includes vessels at the hilum).
        min_lung_fraction: a second eroded component is kept as a lung only when it holds
            at least this fraction of the largest one; otherwise the largest is split at the
            mid-sagittal plane.

    Returns:
        Image on the CT's grid with uint8 data (see the module docstring for the steps).

    Raises:
        InputError: not 3D, no voxel above ``body_hu`` or below ``lung_hu`` inside the body,
            or a non-positive radius / fraction outside (0, 1].
    """
    if image.ndim != 3:
        raise InputError(f"lung_mask: {_name(image)} is {image.ndim}D; lung masking needs a 3D CT")
    if airway_radius_mm <= 0 or closing_radius_mm <= 0:
        raise InputError("lung_mask: airway_radius_mm and closing_radius_mm must be positive (mm)")
    if not 0 < min_lung_fraction <= 1:
        raise InputError(f"lung_mask: min_lung_fraction {min_lung_fraction} must lie in (0, 1]")
    if lung_hu > body_hu + 500 or not np.any(image.data > body_hu):
        raise InputError(f"lung_mask: {_name(image)} has no voxel above body_hu={body_hu} (HU) or lung_hu is too high")
    body = body_mask(image, body_hu)
    candidates = body & (image.data < lung_hu)
    seeds = _seeds(image, candidates, body, airway_radius_mm, min_lung_fraction)
    lungs = _reconstruct(image, candidates, seeds, airway_radius_mm)
    result = np.zeros(image.shape, np.uint8)
    for label in (1, 2):
        closed = _close_and_fill(image, lungs == label, closing_radius_mm)
        result[closed & (result == 0)] = label
    return image.with_data(_name_sides(image, result))


def mask_image(image: Image, mask: Image, background: float = 0.0) -> Image:
    """``image`` inside ``mask > 0``, ``background`` elsewhere (float32; NePhi's image x mask for 0).

    Clip and normalise the CT first (e.g. HU [-1000, 0] -> [0, 1]) so that 0 means air.
    Raises InputError when the mask is not on the image's grid.
    """
    if not image.same_grid(mask, atol=1e-3):
        raise InputError(f"mask_image: {mask.path or 'mask'} is not on the grid of {_name(image)}")
    return image.with_data(np.where(mask.data > 0, image.data, background).astype(np.float32))
