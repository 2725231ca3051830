"""Surface distances between two masks on surfels, the convention of DeepMind's surface-distance
package that Learn2Reg's evaluation uses for HD95 (``hd95_mean`` / ``hd95_per_label`` of metrics.json).

Why not the package itself: ``surface-distance`` is not on PyPI (it is installed from its git
repository or vendored, as Learn2Reg does), so it cannot enter the dependency lock; this module
re-derives the same quantities from their definition and the tests compare them with a literal
re-implementation on hand-made cases.

Definition (masks are boolean arrays in array index order, ``spacing_mm`` per array axis):

* The dual grid: one cell per 2 x 2 (x 2) block of voxels, i.e. at every voxel corner. A cell whose
  corners are neither all inside nor all outside the mask is a surface element (surfel); its
  position is the corner point, its size the area (3D, mm^2) or length (2D, mm) of the
  marching-cubes (marching-squares) surface inside the cell, computed with the spacing.
* The distance from each surfel of one mask to the nearest surfel of the other (exact Euclidean
  distance in mm between corner points, ``scipy.ndimage.distance_transform_edt``).
* The robust Hausdorff distance at ``percent``: in each direction, the smallest distance whose
  cumulative surfel area (distances sorted ascending) reaches ``percent`` % of the total, then the
  larger of the two directions.

This differs from :func:`registration_core.evaluation.metrics.hd95_summary` (MONAI's convention:
surface voxels, voxel centres, every voxel weighted equally): two identical masks shifted by
one voxel give 1 voxel there and here too, but a one-voxel-thin bump gives a voxel-centre
distance of 1 where the surfels of its sides lie 0 from the other surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TypedDict

import numpy as np
from scipy import ndimage
from skimage import measure

from registration_core.errors import InputError

HD95_PERCENT = 95.0


class SurfaceDistances(TypedDict):
    """Result of :func:`surface_distances`: distances (mm) of each surfel of one mask to the other
    mask's surface, sorted ascending, with the surfels' areas (mm^2, or lengths in mm in 2D)."""

    distances_a_to_b: np.ndarray
    distances_b_to_a: np.ndarray
    areas_a: np.ndarray
    areas_b: np.ndarray


def _corner_cube(code: int) -> np.ndarray:
    """The 2x2x2 corner values of neighbourhood ``code``: bit ``7 - (4a + 2b + c)`` is corner (a, b, c)."""
    bits = [(code >> (7 - index)) & 1 for index in range(8)]
    return np.asarray(bits, dtype=np.float64).reshape(2, 2, 2)


@lru_cache(maxsize=16)
def surfel_area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(256,) surface area in mm^2 of the marching-cubes surface in a cell, per neighbourhood code.

    The surface is skimage's classic (Lorensen) marching cubes at level 0.5 on the cell's corner
    values, with the voxel spacing; a configuration with more than four corners inside takes the
    area of its complement, so that a cell's area does not depend on which side is called inside
    (classic marching cubes resolves the ambiguous faces of a case and its complement differently).
    """
    table = np.zeros(256)
    for code in range(1, 255):
        cube = _corner_cube(code if bin(code).count("1") <= 4 else 255 - code)
        vertices, faces, _, _ = measure.marching_cubes(
            cube, 0.5, spacing=spacing_mm, method="lorensen", allow_degenerate=False
        )
        table[code] = measure.mesh_surface_area(vertices, faces)
    return table


def contour_length_table(spacing_mm: tuple[float, float]) -> np.ndarray:
    """(16,) length in mm of the marching-squares contour in a 2x2 cell, per neighbourhood code.

    Bit ``3 - (2a + b)`` is corner (a, b). The contour joins edge midpoints: one corner apart from
    the others cuts a half diagonal; two corners along an axis give a straight segment across the
    cell (perpendicular to that axis); two diagonal corners give two half diagonals.
    """
    half_diagonal = 0.5 * math.hypot(*spacing_mm)
    table = np.zeros(16)
    for code in range(1, 15):
        corners = [(a, b) for a in range(2) for b in range(2) if (code >> (3 - (2 * a + b))) & 1]
        if len(corners) in (1, 3):
            table[code] = half_diagonal
        elif corners[0][0] == corners[1][0]:  # same row a: the contour runs along axis 1
            table[code] = spacing_mm[1]
        elif corners[0][1] == corners[1][1]:  # same column b: the contour runs along axis 0
            table[code] = spacing_mm[0]
        else:
            table[code] = 2 * half_diagonal
    return table


def _neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every cell of the dual grid of ``mask`` (shape ``n + 1`` per axis).

    Cell ``i`` spans voxels ``i - 1`` and ``i`` on every axis (outside the array: background).
    """
    ndim = mask.ndim
    padded = np.pad(mask.astype(np.int32), 1)
    codes = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int32)
    for index in range(2**ndim):
        offset = [(index >> (ndim - 1 - axis)) & 1 for axis in range(ndim)]
        window = tuple(slice(o, o + n + 1) for o, n in zip(offset, mask.shape, strict=True))
        codes |= padded[window] << (2**ndim - 1 - index)
    return codes


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays ordered by (distance, area), ascending."""
    order = np.lexsort((areas, distances))
    return distances[order], areas[order]


def surface_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing_mm: Sequence[float]) -> SurfaceDistances:
    """Surfel distances between two non-empty boolean masks on one grid (2D or 3D).

    Args:
        mask_a, mask_b: (*spatial) boolean masks, e.g. fixed and warped moving label ``l``.
        spacing_mm: ndim voxel sizes in mm, array axis order.

    Returns:
        sorted distances (mm) from each surfel of one mask to the other's surfels, and the surfel
        areas (mm^2; contour lengths in mm in 2D).
    """
    a, b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    if a.shape != b.shape or a.ndim not in (2, 3) or len(spacing_mm) != a.ndim:
        raise InputError(f"masks {a.shape} and {b.shape} must share one 2D/3D grid with {a.ndim} spacings")
    if not (a.any() and b.any()):
        raise InputError("surface distances need two non-empty masks")
    spacing = tuple(float(s) for s in spacing_mm)
    box = _bounding_box(a | b)  # distances do not change: the surfels lie within the box grown by one cell
    codes_a, codes_b = _neighbourhood_codes(a[box]), _neighbourhood_codes(b[box])
    full = 2 ** (2**a.ndim) - 1
    table = surfel_area_table(spacing) if a.ndim == 3 else contour_length_table(spacing)
    surfels_a = (codes_a != 0) & (codes_a != full)
    surfels_b = (codes_b != 0) & (codes_b != full)
    to_a = ndimage.distance_transform_edt(~surfels_a, sampling=spacing)
    to_b = ndimage.distance_transform_edt(~surfels_b, sampling=spacing)
    a_to_b, areas_a = _sorted(to_b[surfels_a], table[codes_a[surfels_a]])
    b_to_a, areas_b = _sorted(to_a[surfels_b], table[codes_b[surfels_b]])
    return {"distances_a_to_b": a_to_b, "distances_b_to_a": b_to_a, "areas_a": areas_a, "areas_b": areas_b}


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Smallest sorted distance whose cumulative area fraction reaches ``percent`` %."""
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, len(distances) - 1)])


def robust_hausdorff(distances: SurfaceDistances, percent: float = HD95_PERCENT) -> float:
    """Area-weighted ``percent`` percentile distance in mm, the larger of the two directions."""
    if not 0 <= percent <= 100:
        raise InputError(f"percent must lie in [0, 100], got {percent}")
    return max(
        _weighted_percentile(distances["distances_a_to_b"], distances["areas_a"], percent),
        _weighted_percentile(distances["distances_b_to_a"], distances["areas_b"], percent),
    )


def hd95_surfel(mask_a: np.ndarray, mask_b: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """HD95 in mm of two non-empty masks in the surface-distance / Learn2Reg convention."""
    return robust_hausdorff(surface_distances(mask_a, mask_b, spacing_mm), HD95_PERCENT)
