"""The file contract: every output folder and file name of a study, in one place.

Writers (registration, synthetic truth pairs, training, aggregation, statistics, report) and
readers (the Snakemake rules, aggregation, the report) ask this module; no other module spells an
output file name. Two levels:

* :data:`PATHS`: study-level templates relative to the working directory. ``{study}`` is the study
  name, ``{subject}`` a subject id, ``{stage}`` ``<position>-<step>`` of a preprocessing stage,
  ``{method}`` a method, ``{grid_id}`` ``key~value__key~value`` (or ``default``), and
  ``{atlas}__{moving}`` a pair (subject ids contain no ``__``, so the pair splits uniquely).
* The names inside one folder that a single command writes: :data:`REG_FILES` (``register
  --out DIR``), :data:`TRUTH_FILES` (``synth-pair --out-dir DIR``), :data:`TRAIN_FILES` (``train
  --out DIR``), :data:`TABLE_FILES` (``aggregate --out-dir DIR``) and :data:`ANOVA_SUMMARY`
  (``anova --out-dir DIR``).
"""

from __future__ import annotations

from pathlib import Path

REG_FILES: dict[str, str] = {
    "warped": "warped.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "displacement": "displacement.nii.gz",
    "inverse_displacement": "inverse_displacement.nii.gz",
    "log": "log.json",
    "failure": "failure.json",
}
"""Files of one registration folder (``reg_dir``): warped image (always), warped labels (with
moving labels), displacement (always, ITK vector image in mm on the fixed grid), inverse
displacement (methods that estimate one) and ``log.json``, written last. A registration that
failed for a reason of its input (``register --record-failures``) holds ``failure.json`` alone:
the failure record (:mod:`registration_core.failures`)."""

FAILURE_KEY = "failure"
"""The one key of a failure record (``{"failure": {stage, reason, job, log, ...}}``): the content of
a registration folder's ``failure.json`` and of an evaluation's metrics file (PATHS ``metrics``)
when that job or its registration failed for a reason of its input."""

TRUTH_FILES: dict[str, str] = {
    "fixed": "fixed.nii.gz",
    "moving": "moving.nii.gz",
    "fixed_labels": "fixed_labels.nii.gz",
    "moving_labels": "moving_labels.nii.gz",
    "mask": "mask.nii.gz",
    "moving_mask": "moving_mask.nii.gz",
    "truth_displacement": "truth_displacement.nii.gz",
    "fixed_landmarks": "fixed_landmarks.csv",
    "moving_landmarks": "moving_landmarks.csv",
    "info": "truth.json",
}
"""Files of one known-truth pair folder (``truth_dir``); labels, masks and landmarks only when the
input has them (landmarks only when some are detected)."""

TRUTH_INPUTS = ("fixed", "moving", "moving_labels", "mask", "truth_displacement", "fixed_landmarks", "moving_landmarks")
"""Keys of :data:`TRUTH_FILES` that the study's later jobs read."""

TRAIN_FILES: dict[str, str] = {"checkpoint": "checkpoint.pt", "model": "model.pt", "log": "log.json"}
"""Files of one training folder (``train_dir``)."""

TABLE_FILES: dict[str, str] = {
    "jobs": "jobs.tsv",
    "metrics": "metrics.csv",
    "dice": "dice_per_label.csv",
    "summary": "summary.csv",
    "loss": "loss_curves.csv",
    "failures": "failures.csv",
}
"""The study tables inside ``results/<study>/`` (names of :data:`PATHS` entries ``jobs`` and ``*_table``)."""

ANOVA_SUMMARY = "anova.json"
"""The statistics summary inside ``anova_dir`` (beside one ``<response>.csv`` per response)."""

ANOVA_FILES: dict[str, str] = {
    "table": "{response}.csv",
    "tukey": "tukey_{response}_{factor}.csv",
    "interaction": "interaction_{response}.png",
    "paired": "paired_{response}_{factor}.csv",
    "methods": "methods_{response}.csv",
    "methods_plot": "methods_{response}.png",
}
"""Files of ``anova --out-dir DIR`` beside :data:`ANOVA_SUMMARY`, per response: the ANOVA table,
Tukey HSD of a significant factor (independent model), interaction plot, paired comparisons of a
factor's levels, methods head to head on the same pairs (table, per-pair differences plot)."""


def anova_file(key: str, **fields: str) -> str:
    """Name of file ``key`` of :data:`ANOVA_FILES` inside ``anova_dir``, e.g. ``anova_file("paired", response="dice_mean", factor="lr")``."""
    return ANOVA_FILES[key].format(**fields)

_STUDY = "results/{study}"
_TRAIN = _STUDY + "/train/{method}/{grid_id}"

PATHS: dict[str, str] = {
    "config": "results/{study}/config.yaml",
    "jobs": f"{_STUDY}/{TABLE_FILES['jobs']}",
    "raw_image": "results/{study}/data/{subject}/image.nii.gz",
    "raw_labels": "results/{study}/data/{subject}/labels.nii.gz",
    "raw_landmarks": "results/{study}/data/{subject}/landmarks.csv",
    "raw_mask": "results/{study}/data/{subject}/mask.nii.gz",
    "prep_image": "results/{study}/prep/{subject}/image.nii.gz",
    "prep_labels": "results/{study}/prep/{subject}/labels.nii.gz",
    "prep_landmarks": "results/{study}/prep/{subject}/landmarks.csv",
    "prep_mask": "results/{study}/prep/{subject}/mask.nii.gz",
    "stage_image": "results/{study}/prep/{subject}/stages/{stage}/image.nii.gz",
    "stage_labels": "results/{study}/prep/{subject}/stages/{stage}/labels.nii.gz",
    "stage_landmarks": "results/{study}/prep/{subject}/stages/{stage}/landmarks.csv",
    "stage_mask": "results/{study}/prep/{subject}/stages/{stage}/mask.nii.gz",
    "qc": "results/{study}/qc/{subject}.png",
    "truth_dir": "results/{study}/truth/{moving}",
    "aligned_image": "results/{study}/aligned/{atlas}__{moving}/image.nii.gz",
    "aligned_labels": "results/{study}/aligned/{atlas}__{moving}/labels.nii.gz",
    "aligned_landmarks": "results/{study}/aligned/{atlas}__{moving}/landmarks.csv",
    "train_dir": _TRAIN,
    "model": f"{_TRAIN}/{TRAIN_FILES['model']}",
    "train_log": f"{_TRAIN}/{TRAIN_FILES['log']}",
    "reg_dir": "results/{study}/reg/{method}/{grid_id}/{atlas}__{moving}",
    "metrics": "results/{study}/eval/{method}/{grid_id}/{atlas}__{moving}.json",
    "metrics_table": f"{_STUDY}/{TABLE_FILES['metrics']}",
    "dice_table": f"{_STUDY}/{TABLE_FILES['dice']}",
    "summary_table": f"{_STUDY}/{TABLE_FILES['summary']}",
    "loss_table": f"{_STUDY}/{TABLE_FILES['loss']}",
    "failures_table": f"{_STUDY}/{TABLE_FILES['failures']}",
    "anova_dir": "results/{study}/anova",
    "report": "reports/{study}/index.html",
    "report_figures": "reports/{study}/figures",
    "logs": "logs/{study}",
    "benchmarks": "logs/{study}/benchmarks",
}
"""Output locations relative to the working directory."""


def benchmark_path(benchmarks_dir: str, rule: str, job: str) -> str:
    """The ``benchmark:`` file of one job of ``rule``: ``<benchmarks_dir>/<rule>/<job>.tsv`` (Snakemake's
    table: wall time ``s``, ``max_rss`` MB, ``cpu_time`` s, ...); ``job`` names the job like its log,
    e.g. ``{method}/{grid_id}/{atlas}__{moving}`` (Snakemake wildcards), ``benchmarks_dir`` is PATHS
    ``benchmarks`` of the study."""
    return f"{benchmarks_dir}/{rule}/{job}.tsv"


def study_relative(key: str, **fields: str) -> str:
    """Template ``key`` of :data:`PATHS` relative to ``results/<study>/`` (``fields`` filled in;
    a glob when they are ``*``). ValueError for a path outside the study's results folder."""
    prefix = "results/{study}/"
    template = PATHS[key]
    if not template.startswith(prefix):
        raise ValueError(f"{key} is not inside {prefix}")
    return template.removeprefix(prefix).format(**fields)


def reg_file(reg_dir: str | Path, key: str) -> Path:
    """Path of file ``key`` of :data:`REG_FILES` in a registration folder."""
    return Path(reg_dir) / REG_FILES[key]


def truth_file(truth_dir: str | Path, key: str) -> Path:
    """Path of file ``key`` of :data:`TRUTH_FILES` in a known-truth pair folder."""
    return Path(truth_dir) / TRUTH_FILES[key]


def train_file(train_dir: str | Path, key: str) -> Path:
    """Path of file ``key`` of :data:`TRAIN_FILES` in a training folder."""
    return Path(train_dir) / TRAIN_FILES[key]


def table_file(study_dir: str | Path, key: str) -> Path:
    """Path of study table ``key`` of :data:`TABLE_FILES` in ``results/<study>``."""
    return Path(study_dir) / TABLE_FILES[key]
