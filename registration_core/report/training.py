"""Report parts for learned methods: training curves and the learned vs per-pair comparison.

Training runs live in ``<study_dir>/train/<method>/<grid_id>/log.json`` (written by
:func:`registration_core.methods.training.train_method`): ``history`` (one record per optimiser step:
``step``, ``total``, terms), ``validation`` (``step``, ``total``, terms), ``train_time_s``,
``peak_rss_mb``, ``n_train``, ``n_val``, ``steps``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from registration_core.core.io import read_json_object
from registration_core.errors import InputError
from registration_core.layout import study_relative
from registration_core.methods import get_method
from registration_core.report.plots import PALETTE, group_label, spans_decades
from registration_core.study.grid import grid_id_without
from registration_core.study.jobs import REGISTER_ONLY_PARAMS

SMOOTHING_STEPS = 25  # training loss drawn as a running mean over this many steps (raw values are noisy)
COMPARED_METRICS = ("dice_mean", "tre_mean_mm", "tre_truth_mm", "neg_jac_ratio", "runtime_s")


def published_preset(method: str) -> dict[str, Any]:
    """The ``published`` preset of ``method`` (empty when it has none or is unknown)."""
    try:
        return dict(get_method(method).presets.get("published", {}))
    except InputError:
        return {}


def is_reproduction(method: str, log: dict) -> bool:
    """True only for a run of ``method``'s ``published`` preset, none of its values overridden, at
    least at the published step count (VoxelMorph: 1500 epochs x 100 steps); a method whose preset
    states no step count (epochs of an unknown dataset, early stopping) is never a reproduction."""
    params = log.get("params") or {}
    published = published_preset(method)
    needed = published.pop("steps", None)
    return (
        params.get("preset") == "published" and needed is not None and (log.get("steps") or 0) >= needed
        and all(_same(params.get(key), value) for key, value in published.items())
    )


def _same(logged: Any, preset: Any) -> bool:
    """A logged parameter equals the preset's value (lists in the log, tuples in presets)."""
    as_list = [list(v) if isinstance(v, (list, tuple)) else v for v in (logged, preset)]
    return as_list[0] == as_list[1]


def training_budget(log: dict) -> str:
    """``"<steps> steps · <images> images · <seconds> s"`` of one training log."""
    seconds = log.get("train_time_s")
    wall = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "? s"
    return f"{log.get('steps')} steps · {log.get('n_train')} images · {wall}"


@dataclass(frozen=True)
class TrainingRun:
    """One training run: its method, grid point, curves (tidy) and summary figures."""

    method: str
    grid_id: str
    curves: pd.DataFrame  # columns step, loss, split ("training (running mean)" | "validation")
    summary: dict[str, object]

    @property
    def group(self) -> str:
        return group_label(self.method, self.grid_id)


def _curves(log: dict) -> pd.DataFrame:
    """Tidy curves of one training log."""
    history = pd.DataFrame(log.get("history") or [])
    validation = pd.DataFrame(log.get("validation") or [])
    parts = []
    if {"step", "total"} <= set(history.columns):
        smooth = history["total"].rolling(SMOOTHING_STEPS, min_periods=1).mean()
        parts.append(pd.DataFrame({"step": history["step"], "loss": smooth, "split": "training (running mean)"}))
    if {"step", "total"} <= set(validation.columns):
        parts.append(pd.DataFrame({"step": validation["step"], "loss": validation["total"], "split": "validation"}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "loss", "split"])


def load_training_runs(study_dir: Path) -> list[TrainingRun]:
    """Every ``train/<method>/<grid_id>/log.json`` of the study, sorted by method and grid point."""
    runs = []
    for path in sorted(Path(study_dir).glob(study_relative("train_log", method="*", grid_id="*"))):
        log = read_json_object(path, "training log file")
        validation = log.get("validation") or [{}]
        history = log.get("history") or [{}]
        summary = {
            "method · grid point": group_label(path.parent.parent.name, path.parent.name),
            "steps": log.get("steps"),
            "training images": log.get("n_train"),
            "validation images": log.get("n_val") or "–",
            "training time (s)": log.get("train_time_s"),
            "peak RSS (MiB)": log.get("peak_rss_mb"),
            "last training loss": history[-1].get("total"),
            "last validation loss": validation[-1].get("total"),
            "device": log.get("device"),
            "budget": training_budget(log),
            "reproduction": "yes" if is_reproduction(path.parent.parent.name, log) else "no",
        }
        runs.append(TrainingRun(path.parent.parent.name, path.parent.name, _curves(log), summary))
    return runs


def training_curves(runs: list[TrainingRun]) -> Figure:
    """One panel per training run: running-mean training loss and validation loss vs step."""
    ncols = min(3, len(runs))
    nrows = -(-len(runs) // ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, run in zip(axes, runs, strict=False):
        sns.lineplot(
            data=run.curves, x="step", y="loss", hue="split", palette=PALETTE, estimator=None, errorbar=None, ax=ax,
        )
        if spans_decades(run.curves["loss"], ratio=10.0):
            ax.set_yscale("log")
        ax.set_title("\n".join(textwrap.wrap(run.group, 48)), fontsize=8.5)
        ax.legend(fontsize=7, title=None)
        ax.grid(alpha=0.3)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    return figure


def model_id(grid_id: str) -> str:
    """The training run a registration grid point used: its grid id without the keys that only
    act at registration (:data:`registration_core.study.jobs.REGISTER_ONLY_PARAMS`)."""
    return grid_id_without(grid_id, REGISTER_ONLY_PARAMS)


def comparison_table(metrics: pd.DataFrame, runs: list[TrainingRun]) -> pd.DataFrame:
    """Per method x grid point on the same test pairs: mean quality metrics, registration time per
    pair and, for learned methods, the training time of the model it used. ``metrics``:
    metrics.csv with a ``group`` column."""
    present = [m for m in COMPARED_METRICS if m in metrics.columns and metrics[m].notna().any()]
    table = metrics.groupby(["group", "method", "grid_id"], sort=False)[present].mean().reset_index()
    training = {(run.method, run.grid_id): run.summary for run in runs}
    used = [training.get((method, model_id(grid_id))) for method, grid_id in zip(table["method"], table["grid_id"])]
    table["training time (s)"] = [np.nan if run is None else run["training time (s)"] for run in used]
    if any(run is not None for run in used):  # learned results carry their budget, never passed off as published
        table["training budget"] = ["–" if run is None else run["budget"] for run in used]
        table["reproduction"] = ["–" if run is None else run["reproduction"] for run in used]
    table = table.drop(columns=["method", "grid_id"])
    return table.rename(columns={"group": "method · grid point", "runtime_s": "registration time per pair (s)"})
