"""The metric registry: one declaration per scalar metric of a registered pair.

Each :class:`Metric` names a ``metrics.json`` key (and so a ``metrics.csv`` column), the inputs of
``evaluate`` that produce it, whether higher values are better, its unit and its convention in
one sentence. Evaluation (:mod:`registration_core.evaluation.evaluate`), the study tables
(:mod:`registration_core.evaluation.aggregate`: known scalar columns, robustness quantiles of the
summary), the statistics (the allowed ANOVA responses, the direction of "better") and the report
(the metric table with conventions) all read :data:`METRICS`; the config schema's
``anova.responses`` enum is tested to equal :func:`anova_responses`.

Inputs: ``labels`` (fixed and warped label maps), ``moving_labels``, ``displacement`` (always
given), ``landmarks``, ``images`` (fixed and moving or warped image), ``truth`` (true displacement)
and ``log`` (fields of the registration's log.json rather than of metrics.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from registration_core.errors import InputError

INPUTS = ("labels", "moving_labels", "displacement", "landmarks", "images", "truth", "log")

LOWER_QUANTILE = 0.3
"""Robustness quantile of a higher-is-better metric (Learn2Reg's DSC30: the 30 % quantile over pairs)."""
UPPER_QUANTILE = 0.7
"""Robustness quantile of a lower-is-better metric (the 70 % quantile: the worst 30 % of pairs begin there)."""


@dataclass(frozen=True)
class Metric:
    """One scalar metric of a registered pair.

    Attributes:
        name: the metrics.json key and metrics.csv column.
        inputs: the kinds of input (see :data:`INPUTS`) it needs.
        higher_is_better: True / False, or None when neither (counts, reference values).
        unit: e.g. ``"mm"``, ``"fraction"``, ``"%"``, ``""`` (dimensionless).
        convention: how it is computed, in one sentence (shown in the report's metric table).
        response: whether the ANOVA may analyse it (``anova.responses``).
        robust: whether the study summary reports its robustness quantile (``<name>_q30`` for a
            higher-is-better metric, ``<name>_q70`` for a lower-is-better one, over the pairs).
    """

    name: str
    inputs: tuple[str, ...]
    higher_is_better: bool | None
    unit: str
    convention: str
    response: bool = True
    robust: bool = False

    @property
    def robust_quantile(self) -> float | None:
        """0.3 (higher is better) or 0.7 (lower is better) when :attr:`robust`, else None."""
        if not self.robust or self.higher_is_better is None:
            return None
        return LOWER_QUANTILE if self.higher_is_better else UPPER_QUANTILE

    @property
    def robust_column(self) -> str | None:
        """Summary column of the robustness quantile, e.g. ``dice_mean_q30``; None without one."""
        quantile = self.robust_quantile
        return None if quantile is None else f"{self.name}_q{round(quantile * 100)}"


_L2R = "as Learn2Reg's evaluation (MDL-UzL/L2R)"
METRICS: tuple[Metric, ...] = (
    Metric("dice_mean", ("labels",), True, "",
           "mean over the scored labels of 2|F∩W|/(|F|+|W|), F fixed and W warped moving labels (nearest-neighbour "
           "warp); a label absent from both maps is skipped, one in a single map scores 0", robust=True),
    Metric("dice_mean_before", ("labels", "moving_labels"), True, "",
           "dice_mean of the fixed and the unwarped moving labels", response=False),
    Metric("hd95_mean", ("labels",), False, "mm",
           "mean over labels of DeepMind surface-distance's robust Hausdorff at 95 % "
           "(surfels on the voxel-corner grid, percentile weighted by surfel area, max of both directions), "
           f"{_L2R}, with the image spacing in mm", robust=True),
    Metric("hd95_voxel_mean", ("labels",), False, "mm",
           "mean over labels of max(P95 fixed→warped, P95 warped→fixed) of the distances between surface voxels "
           "(mask minus its face-connected erosion, voxel centres, exact EDT in mm, each voxel weighted equally): "
           "MONAI's convention"),
    Metric("neg_jac_ratio", ("displacement",), False, "fraction",
           "r^D: fraction of voxels with det J <= 0, J of x -> x + u(x) by central differences (one-sided at the "
           "border), every voxel"),
    Metric("neg_jac_sum", ("displacement",), False, "",
           "s^D: sum over voxels of max(-det J, 0), central differences, every voxel"),
    Metric("neg_jac_pct_nodeo", ("displacement",), False, "%",
           "r^D in NODEO's convention: 100 x fraction of voxels with det J <= 0, J by forward differences on the "
           "voxels whose forward neighbours exist"),
    Metric("neg_jac_sum_nodeo", ("displacement",), False, "",
           "s^D in NODEO's convention: sum of max(-det J, 0), forward differences"),
    Metric("sdlogj", ("displacement",), False, "",
           "std (ddof 0) of log det J over the voxels with det J > 0, central differences, every voxel"),
    Metric("sdlogj_l2r", ("displacement",), False, "",
           "std (ddof 0) of log(clip(det J + 3, 1e-9, 1e9)), J by central differences with zero outside the grid, "
           f"cropped by 2 voxels on every side, {_L2R}", robust=True),
    Metric("detj_min", ("displacement",), True, "", "smallest det J (central differences)", response=False),
    Metric("detj_max", ("displacement",), None, "", "largest det J (central differences)", response=False),
    Metric("n_labels", ("labels",), None, "", "number of labels scored by Dice", response=False),
    Metric("tre_mean_mm", ("landmarks",), False, "mm",
           "mean over landmarks of |p + u(p) - q| in mm, u linearly interpolated at the fixed landmark p",
           robust=True),
    Metric("tre_std_mm", ("landmarks",), None, "mm", "standard deviation (ddof 0) of the landmark errors",
           response=False),
    Metric("tre_max_mm", ("landmarks",), False, "mm", "largest landmark error"),
    Metric("tre_before_mm", ("landmarks",), None, "mm", "mean landmark distance before registration (u = 0)",
           response=False),
    Metric("n_landmarks", ("landmarks",), None, "", "number of landmark pairs", response=False),
    Metric("ncc_before", ("images",), None, "", "Pearson correlation of fixed and moving image, every voxel",
           response=False),
    Metric("mse_before", ("images",), None, "", "mean squared difference of fixed and moving image",
           response=False),
    Metric("ncc_after", ("images",), True, "", "Pearson correlation of fixed and warped image, every voxel"),
    Metric("mse_after", ("images",), False, "", "mean squared difference of fixed and warped image"),
    Metric("tre_truth_mm", ("truth",), False, "mm",
           "mean over the mask of |u(x) - d(x)| in mm against the true displacement d", robust=True),
    Metric("tre_truth_max_mm", ("truth",), False, "mm", "largest |u - d| over the mask"),
    Metric("tre_truth_before_mm", ("truth",), None, "mm", "mean |d| over the mask (error of u = 0)",
           response=False),
    Metric("n_truth_voxels", ("truth",), None, "", "voxels measured against the true displacement",
           response=False),
    Metric("runtime_s", ("log",), False, "s", "wall-clock time of the registration job (log.json)"),
    Metric("peak_rss_mb", ("log",), False, "MB", "peak resident memory of the registration job (log.json)"),
)
"""Every scalar metric, in the order of metrics.json and of the report's metric table."""

_BY_NAME = {metric.name: metric for metric in METRICS}


def metric(name: str) -> Metric:
    """The registered metric ``name``; InputError listing the known names otherwise."""
    if name not in _BY_NAME:
        raise InputError(f"metric {name!r} is not registered; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def find(name: str) -> Metric | None:
    """The registered metric ``name`` or None (columns such as ``metric_iterations`` are not metrics)."""
    return _BY_NAME.get(name)


def pair_metric_names() -> tuple[str, ...]:
    """Names of the metrics.json scalars (every metric not read from log.json)."""
    return tuple(m.name for m in METRICS if "log" not in m.inputs)


def anova_responses() -> tuple[str, ...]:
    """The metrics the ANOVA may analyse (the schema's ``anova.responses`` enum), in registry order."""
    return tuple(m.name for m in METRICS if m.response)


def higher_is_better(name: str) -> bool:
    """Direction of a response; InputError for a metric without one."""
    direction = metric(name).higher_is_better
    if direction is None:
        raise InputError(f"metric {name!r} has no better direction (neither higher nor lower is better)")
    return direction
