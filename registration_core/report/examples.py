"""Example-pair figures: images, differences, deformation grid and Jacobian determinant.

The fixed image is the atlas; ``displacement.nii.gz`` maps a fixed-grid point x to x + u(x) in the
moving image, and ``warped = moving o (id + u)`` lies on the fixed grid. For 3D volumes every
panel shows the middle axial slice: the voxel axis most aligned with the RAS S axis is cut at
its middle index; the Jacobian determinant is computed on the full 3D field before slicing.
Slices are drawn with array axis ``a`` (the first in-plane axis) horizontal and axis ``b``
vertical (origin lower left), with the aspect ratio of the voxel spacing.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from registration_core.core.io import Image, load_displacement, load_image, read_json_object
from registration_core.core.spatial import jacobian_determinant
from registration_core.errors import InputError
from registration_core.layout import reg_file

GRID_LINES = 24  # about this many deformation-grid lines per axis
FACT_WIDTH = 32  # characters per line of the facts panel
CHECKER_TILES = 8  # about this many checkerboard squares per axis


@dataclass(frozen=True)
class ExampleSlices:
    """2D views of one registered pair, all on the fixed grid.

    Attributes:
        fixed, moving, warped: (n_a, n_b) intensities.
        disp_vox: (2, n_a, n_b) in-plane displacement in voxels along axes a and b.
        jac_det: (n_a, n_b) Jacobian determinant of x -> x + u(x).
        spacing_mm: (spacing along a, spacing along b).
        plane: description of the view (``"2D image"`` or ``"axial slice 80 of array axis 2"``).
    """

    fixed: np.ndarray
    moving: np.ndarray
    warped: np.ndarray
    disp_vox: np.ndarray
    jac_det: np.ndarray
    spacing_mm: tuple[float, float]
    plane: str


def axial_axis(affine: np.ndarray) -> int:
    """Index of the voxel axis most aligned with the RAS superior (z) axis."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def _same_grid(image: Image, fixed: Image, what: str) -> None:
    if image.shape != fixed.shape:
        raise InputError(
            f"{image.path}: {what} has shape {image.shape}; the fixed image {fixed.path} has {fixed.shape}"
        )


def load_example(reg_dir: Path, log_path: Path) -> ExampleSlices:
    """Load a pair's fixed, moving (paths from log.json ``inputs``), warped image and displacement.

    Raises:
        InputError naming the file: missing/unreadable files, missing ``inputs`` keys, images not
        on the fixed grid.
    """
    inputs = read_json_object(log_path, "registration log file").get("inputs")
    if not isinstance(inputs, dict) or not all(isinstance(inputs.get(k), str) for k in ("fixed", "moving")):
        raise InputError(f"{log_path}: key 'inputs' must hold the 'fixed' and 'moving' image paths")
    fixed = load_image(inputs["fixed"])
    moving, warped = load_image(inputs["moving"]), load_image(reg_file(reg_dir, "warped"))
    _same_grid(moving, fixed, "moving image")
    _same_grid(warped, fixed, "warped image")
    disp_vox = load_displacement(reg_file(reg_dir, "displacement"), fixed)
    jac_det = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp_vox))[None].double())[0].numpy()
    if fixed.ndim == 2:
        axes, plane, cut = (0, 1), "2D image", (slice(None), slice(None))
    else:
        normal = axial_axis(fixed.affine)
        index = fixed.shape[normal] // 2
        axes = tuple(a for a in range(3) if a != normal)
        plane = f"axial slice {index} of array axis {normal}"
        cut = tuple(index if a == normal else slice(None) for a in range(3))
    return ExampleSlices(
        fixed=fixed.data[cut],
        moving=moving.data[cut],
        warped=warped.data[cut],
        disp_vox=np.stack([disp_vox[a][cut] for a in axes]),
        jac_det=jac_det[cut],
        spacing_mm=(fixed.spacing[axes[0]], fixed.spacing[axes[1]]),
        plane=plane,
    )


def _show(ax: Axes, image: np.ndarray, example: ExampleSlices, title: str, **style) -> object:
    """Draw a (n_a, n_b) slice with axis a horizontal, axis b vertical, true aspect; no ticks."""
    shown = ax.imshow(image.T, origin="lower", aspect=example.spacing_mm[1] / example.spacing_mm[0], **style)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _draw_grid(ax: Axes, disp_vox: np.ndarray) -> None:
    """Deformed grid lines x + u(x) of every ``step``-th row and column of the fixed grid."""
    n_a, n_b = disp_vox.shape[1:]
    step = max(1, max(n_a, n_b) // GRID_LINES)
    ia, ib = np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij")
    pa, pb = ia + disp_vox[0], ib + disp_vox[1]
    for i in range(0, n_a, step):
        ax.plot(pa[i, :], pb[i, :], color="#ffc400", linewidth=0.6)
    for j in range(0, n_b, step):
        ax.plot(pa[:, j], pb[:, j], color="#ffc400", linewidth=0.6)
    ax.set_xlim(-0.5, n_a - 0.5)
    ax.set_ylim(-0.5, n_b - 0.5)


def _panel_figure(example: ExampleSlices, panel_width_in: float = 3.0, columns: int = 5) -> tuple[Figure, list[Axes]]:
    """A figure with 2 x ``columns`` axes sized to the slice's physical aspect ratio (height/width in [0.4, 1.6])."""
    n_a, n_b = example.fixed.shape
    aspect = min(max((n_b * example.spacing_mm[1]) / (n_a * example.spacing_mm[0]), 0.4), 1.6)
    panel_height_in = panel_width_in * aspect
    title_in, row_gap_in, col_gap_in = 0.7, 0.45, 0.75
    width = columns * panel_width_in + columns * col_gap_in
    height = 2 * panel_height_in + row_gap_in + title_in + 0.15
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=0.1 / width, right=1 - col_gap_in / width, bottom=0.1 / height, top=1 - title_in / height,
        wspace=col_gap_in / panel_width_in, hspace=row_gap_in / panel_height_in,
    )
    return figure, list(figure.subplots(2, columns).ravel())


def checkerboard(first: np.ndarray, second: np.ndarray, tiles: int = CHECKER_TILES) -> np.ndarray:
    """``first`` and ``second`` (same shape) interleaved in about ``tiles`` x ``tiles`` squares:
    edges that continue across square borders show where the two images agree."""
    side = max(1, round(max(first.shape) / tiles))
    index = np.indices(first.shape) // side
    return np.where(index.sum(axis=0) % 2 == 0, first, second)


def example_figure(example: ExampleSlices, title: str, facts: list[str]) -> Figure:
    """2 x 5 panels: fixed, moving, warped, checkerboard fixed/moving, deformation grid /
    |moving-fixed|, |warped-fixed|, checkerboard fixed/warped, det J, facts.

    Intensity windows: the fixed image's 1st-99th percentiles for the images and checkerboards, a
    shared 0..99th percentile of |moving - fixed| for both differences; det J on a diverging map
    centred at 1.
    """
    figure, axes = _panel_figure(example)
    low, high = np.percentile(example.fixed, [1, 99])
    gray = {"cmap": "gray", "vmin": low, "vmax": high}
    _show(axes[0], example.fixed, example, "fixed (atlas)", **gray)
    _show(axes[1], example.moving, example, "moving", **gray)
    _show(axes[2], example.warped, example, "warped moving", **gray)
    _show(axes[3], checkerboard(example.fixed, example.moving), example, "checkerboard fixed / moving", **gray)
    _show(axes[4], example.fixed, example, "deformation grid x + u(x) on fixed", **gray)
    _draw_grid(axes[4], example.disp_vox)
    before, after = np.abs(example.moving - example.fixed), np.abs(example.warped - example.fixed)
    diff = {"cmap": "magma", "vmin": 0, "vmax": max(float(np.percentile(before, 99)), 1e-12)}
    _show(axes[5], before, example, "|moving - fixed| (before)", **diff)
    shown = _show(axes[6], after, example, "|warped - fixed| (after)", **diff)
    figure.colorbar(shown, cax=axes[6].inset_axes((1.03, 0.0, 0.05, 1.0)))
    _show(axes[7], checkerboard(example.fixed, example.warped), example, "checkerboard fixed / warped", **gray)
    half_range = max(float(np.abs(example.jac_det - 1).max()), 1e-3)
    n_fold = int(np.count_nonzero(example.jac_det <= 0))
    shown = _show(
        axes[8], example.jac_det, example, f"Jacobian determinant ({n_fold} px <= 0)",
        cmap="RdBu_r", norm=CenteredNorm(vcenter=1.0, halfrange=half_range),
    )
    figure.colorbar(shown, cax=axes[8].inset_axes((1.03, 0.0, 0.05, 1.0)))
    axes[9].axis("off")
    lines = [wrapped for line in [*facts, example.plane] for wrapped in textwrap.wrap(line, FACT_WIDTH)]
    axes[9].text(0.15, 1, "\n".join(lines), va="top", fontsize=8.5, family="monospace")
    figure.suptitle(title, fontsize=11)
    return figure
