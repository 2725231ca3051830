"""Study-level figures of the report (seaborn on matplotlib Figures rendered by the Agg canvas).

Every function takes tidy tables (as written by :mod:`registration_core.evaluation.aggregate`) with an
extra ``group`` column naming the method and grid point (see :func:`group_label`), and returns
a :class:`matplotlib.figure.Figure`; nothing touches pyplot's global state.
"""

from __future__ import annotations

import io
import textwrap
import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PALETTE = "colorblind"


def group_label(method: str, grid_id: str) -> str:
    """Readable name of a grid point: ``nodeo · lr=0.01, kernel=AK`` (``default`` -> the method)."""
    if grid_id == "default":
        return method
    return f"{method} · {grid_id.replace('__', ', ').replace('~', '=')}"


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """Render ``figure`` to PNG bytes (Agg), without the software tag in the PNG metadata."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _boxplot(**kwargs: object) -> None:
    """``seaborn.boxplot`` without seaborn 0.13's deprecation warning under matplotlib >= 3.11 (``vert``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=MatplotlibDeprecationWarning)
        sns.boxplot(**kwargs)


def spans_decades(values: pd.Series, ratio: float = 20.0) -> bool:
    """True when all values are positive and max/min exceeds ``ratio`` (a log axis helps)."""
    values = values.dropna()
    return bool(len(values)) and values.min() > 0 and values.max() / values.min() > ratio


def metric_boxplot(metrics: pd.DataFrame, metric: str, groups: list[str]) -> Figure:
    """Box plot (with the pairs as points) of one per-pair metric for each method x grid point.

    Args:
        metrics: metrics.csv rows with a ``group`` column.
        metric: the per-pair metric column (e.g. ``dice_mean``).
        groups: group names in display order (top to bottom).
    """
    figure = Figure(figsize=(8, 1.2 + 0.4 * len(groups)), layout="constrained")
    ax = figure.subplots()
    _boxplot(data=metrics, x=metric, y="group", order=groups, color="#bcd4e6", fliersize=0, ax=ax)
    sns.stripplot(data=metrics, x=metric, y="group", order=groups, color="#1f3b57", size=3, alpha=0.7, ax=ax)
    ax.set_ylabel("")
    ax.grid(axis="x", alpha=0.3)
    return figure


def dice_per_label_boxplot(dice: pd.DataFrame, groups: list[str]) -> Figure:
    """Per-label Dice box plots: one row per label, one box per group (hue).

    Args:
        dice: dice_per_label.csv rows (columns ``label``, ``dice``, ``group``).
        groups: the groups to show, in legend order.
    """
    labels = [str(label) for label in sorted(dice["label"].unique())]
    data = dice[dice["group"].isin(groups)].assign(label=lambda d: d["label"].astype(str))
    height = 1.5 + 0.1 * len(labels) * (len(groups) + 1)
    legend_width = 0.8 + 0.065 * max(len(g) for g in groups)  # inches, 8 pt text in one column
    figure = Figure(figsize=(7 + legend_width, max(height, 0.25 * len(groups) + 1)), layout="constrained")
    ax = figure.subplots()
    _boxplot(
        data=data, x="dice", y="label", hue="group", order=labels, hue_order=groups, palette=PALETTE,
        fliersize=2, linewidth=0.8, ax=ax,
    )
    ax.set_xlabel("Dice")
    ax.set_ylabel("label")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return figure


def runtime_scatter(metrics: pd.DataFrame, metric: str) -> Figure:
    """Runtime (s) vs a quality metric, one colour per method (a log time axis when it spans decades)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    sns.scatterplot(data=metrics, x="runtime_s", y=metric, hue="method", style="method", palette=PALETTE, ax=ax)
    if spans_decades(metrics["runtime_s"]):
        ax.set_xscale("log")
    ax.set_xlabel("runtime (s)")
    ax.grid(alpha=0.3)
    return figure


def _loss_panel(ax: Axes, curves: pd.DataFrame, term: str, title: str) -> None:
    """One grid point's loss curves: one line per pair."""
    sns.lineplot(
        data=curves, x="iteration", y=term, hue="pair", palette=PALETTE, estimator=None, errorbar=None, ax=ax,
        legend="brief",
    )
    if spans_decades(curves[term], ratio=10.0):
        ax.set_yscale("log")
    ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=8.5)
    ax.legend(fontsize=7, title=None)
    ax.grid(alpha=0.3)


def loss_curve_grid(loss: pd.DataFrame, term: str, groups: list[str]) -> Figure:
    """Loss curves (``term`` vs iteration) of a few pairs per grid point, one panel per group.

    Args:
        loss: loss_curves.csv rows with ``group`` and ``pair`` columns, already limited to the
            pairs to draw.
        term: the loss column to draw (e.g. ``total``).
        groups: one panel per group, in this order.
    """
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, group in zip(axes, groups, strict=False):
        _loss_panel(ax, loss[loss["group"] == group], term, group)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return figure
