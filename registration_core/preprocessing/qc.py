"""Quality-control pictures: an image before and after preprocessing, with label and mask outlines.

Layout of :func:`save_qc_png`: two columns (left: the raw image, right: the prepared image) and
one row per view: the middle slice across array axis 0, 1 and 2 of a 3D image (rows 1-3), the
image itself for 2D (row 1; a 2D stage next to a 3D one leaves the other rows empty). Each panel
shows the slice in *array* orientation, not radiological: the horizontal axis is the slice's first
remaining array axis, the vertical axis (upwards) its second, and the pixel aspect ratio is the
voxel spacing ratio, so anatomy keeps its physical proportions. The grey window of each image is
its 1st-99th intensity percentile. Label maps are drawn as coloured outlines (one colour per label
value), the mask as a yellow contour.

Every panel is ``PANEL_PX`` x ``PANEL_PX`` pixels, so the PNG is ``2 * PANEL_PX`` wide and
``PANEL_PX`` (2D) or ``3 * PANEL_PX`` (3D) high.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from registration_core.core.io import Image, atomic_path
from registration_core.errors import InputError

PANEL_PX = 300
DPI = 100
WINDOW_PERCENTILES = (1.0, 99.0)
MASK_COLOUR = "yellow"
LABEL_COLOURMAP = "tab20"


def mid_slice(array: np.ndarray, axis: int) -> np.ndarray:
    """The middle slice ``index = n // 2`` across ``axis`` of a 3D array; a 2D array is returned as is."""
    if array.ndim == 2:
        return array
    return np.take(array, array.shape[axis] // 2, axis=axis)


def label_outlines(labels_2d: np.ndarray) -> np.ndarray:
    """Outline pixels of a 2D label slice: the label value where a 4-neighbour differs, else 0."""
    edge = np.zeros(labels_2d.shape, dtype=bool)
    for axis in (0, 1):
        differs = np.diff(labels_2d, axis=axis) != 0
        low = [slice(None), slice(None)]
        high = [slice(None), slice(None)]
        low[axis], high[axis] = slice(None, -1), slice(1, None)
        edge[tuple(low)] |= differs
        edge[tuple(high)] |= differs
    return np.where(edge, labels_2d, 0)


def _window(image: Image) -> tuple[float, float]:
    """Grey window: the 1st and 99th intensity percentiles (widened to 1 when they coincide)."""
    low, high = (float(v) for v in np.percentile(image.data, WINDOW_PERCENTILES))
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def _check_same_grid(image: Image, overlay: Image | None, what: str) -> None:
    """An overlay must lie on its image's grid."""
    if overlay is not None and not image.same_grid(overlay):
        raise InputError(
            f"qc: {what} {overlay.path or ''} (shape {overlay.shape}) is not on the grid of its image "
            f"{image.path or ''} (shape {image.shape})"
        )


def _draw_panel(ax, image: Image, axis: int, labels: Image | None, mask: Image | None, name: str) -> None:
    """One view of one stage on ``ax``: grey slice, label outlines, mask contour, caption."""
    kept = [a for a in range(image.ndim) if a != axis] if image.ndim == 3 else [0, 1]
    aspect = image.spacing[kept[1]] / image.spacing[kept[0]]
    low, high = _window(image)
    ax.imshow(mid_slice(image.data, axis).T, cmap="gray", vmin=low, vmax=high, origin="lower",
              aspect=aspect, interpolation="nearest")
    if labels is not None:
        outlines = label_outlines(mid_slice(labels.data, axis)).T
        if outlines.any():
            ax.imshow(np.ma.masked_equal(outlines, 0), cmap=LABEL_COLOURMAP, origin="lower", aspect=aspect,
                      interpolation="nearest", vmin=0, vmax=max(int(outlines.max()), 1))
    if mask is not None:
        mask_slice = mid_slice(mask.data, axis).T > 0
        if mask_slice.any() and not mask_slice.all():
            ax.contour(mask_slice.astype(np.float32), levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
    where = "" if image.ndim == 2 else f", axis {axis} slice {image.shape[axis] // 2}"
    ax.set_title(f"{name}{where}\n{'x'.join(map(str, image.shape))}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def save_qc_png(
    raw: Image,
    prepared: Image,
    out_png: Path,
    raw_labels: Image | None = None,
    prepared_labels: Image | None = None,
    prepared_mask: Image | None = None,
    title: str = "",
) -> None:
    """Write the QC picture of one subject (layout in the module docstring), atomically.

    Args:
        raw: the image as read from the dataset, 2D or 3D (its own grid).
        prepared: the image after preprocessing, 2D or 3D (its own grid).
        out_png: the PNG to write (parent folders are created).
        raw_labels: label map on ``raw``'s grid, drawn as outlines.
        prepared_labels: label map on ``prepared``'s grid, drawn as outlines.
        prepared_mask: mask on ``prepared``'s grid (non-zero = inside), drawn as a contour.
        title: a line written above the panels (e.g. the subject id).

    Raises:
        InputError: an overlay that is not on its image's grid.
    """
    _check_same_grid(raw, raw_labels, "raw labels")
    _check_same_grid(prepared, prepared_labels, "labels")
    _check_same_grid(prepared, prepared_mask, "mask")
    stages = [(raw, raw_labels, None, "raw"), (prepared, prepared_labels, prepared_mask, "prepared")]
    n_rows = 3 if max(raw.ndim, prepared.ndim) == 3 else 1
    figure = Figure(figsize=(2 * PANEL_PX / DPI, n_rows * PANEL_PX / DPI), dpi=DPI)
    axes = figure.subplots(n_rows, 2, squeeze=False)
    for column, (image, labels, mask, name) in enumerate(stages):
        for row in range(n_rows):
            if image.ndim == 2 and row > 0:
                axes[row, column].set_axis_off()
                continue
            _draw_panel(axes[row, column], image, row, labels, mask, name)
    if title:
        figure.suptitle(title, fontsize=8)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
