"""Build the self-contained HTML report of a study.

Inputs (``study_dir`` = ``results/<study>``): metrics.csv, summary.csv, jobs.tsv (required),
dice_per_label.csv and loss_curves.csv (optional: absent or empty -> the section says so),
train/<method>/<grid_id>/log.json of learned methods and qc/<subject>.png (optional: the
"Learned methods" and "Preprocessing QC" sections appear only when they exist),
anova/anova.json with its tables and plots (optional), and the per-pair registration folders
listed in metrics.csv (``reg_dir`` with warped.nii.gz, displacement.nii.gz; ``log`` with the
fixed/moving image paths under "inputs"). Relative paths are resolved against the working
directory, as in :mod:`registration_core.evaluation.aggregate`.

Output: one HTML file with inline CSS, PNG figures as base64 data URIs, no script and no
network reference; each figure is also written as ``<out_html.parent>/figures/<name>.png``
(for ``snakemake --report``), and :func:`build_report` returns those paths.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import registration_core
from registration_core.core.io import atomic_path, read_json_object
from registration_core.core.yaml_io import load_yaml_text
from registration_core.errors import InputError
from registration_core.evaluation import registry
from registration_core.evaluation.aggregate import ID_COLUMNS, JOB_COLUMNS, read_jobs
from registration_core.layout import ANOVA_SUMMARY, table_file
from registration_core.report import markup
from registration_core.report.examples import example_figure, load_example
from registration_core.report.failures import failures_block, read_failures
from registration_core.report.plots import (
    dice_per_label_boxplot,
    group_label,
    loss_curve_grid,
    metric_boxplot,
    png_bytes,
    runtime_scatter,
)
from registration_core.report.training import SMOOTHING_STEPS, comparison_table, load_training_runs, training_curves

PRIMARY_METRICS = (  # (metric, higher is better): the first available ranks grid points and pairs
    ("dice_mean", True), ("tre_mean_mm", False), ("tre_truth_mm", False), ("ncc_after", True),
)
BEFORE_AFTER = (  # (before, after, label) of metrics shown as paired box plots
    ("tre_before_mm", "tre_mean_mm", "landmark TRE (mm)"),
    ("ncc_before", "ncc_after", "NCC of fixed and moving/warped"),
)
MAX_QC_IMAGES = 16
MAX_LABEL_BOXES = 240  # per-label Dice plot: all grid points up to this many boxes, else the best per method
MAX_LOSS_GROUPS = 12  # loss curves: panels drawn at most
MAX_LOSS_PAIRS = 3  # loss curves: pairs drawn per grid point


@dataclass(frozen=True)
class Study:
    """A study's tables as read from ``results/<study>``.

    ``metrics``, ``summary``, ``dice`` and ``loss`` carry an extra ``group`` column (see
    :func:`registration_core.report.plots.group_label`); ``groups`` lists them in summary order.
    ``primary`` is the metric ranking grid points and pairs: (column, higher_is_better) or None.
    """

    name: str
    directory: Path
    config_path: Path
    config_text: str
    factors: list[str]
    metrics: pd.DataFrame
    summary: pd.DataFrame
    dice: pd.DataFrame | None
    loss: pd.DataFrame | None
    primary: tuple[str, bool] | None
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    """failures.csv: the jobs that failed for a reason of their input (no rows when none did)."""

    @property
    def groups(self) -> list[str]:
        """Method x grid point names in summary order."""
        return self.summary["group"].tolist()


@dataclass
class FigureSink:
    """Writes each figure to ``directory/<name>.png`` and returns its embedded HTML."""

    directory: Path
    paths: list[Path] = field(default_factory=list)

    def add(self, name: str, content: Figure | bytes, caption: str) -> str:
        """Save a figure (or PNG bytes) atomically, remember its path, return a ``<figure>`` element."""
        png = content if isinstance(content, bytes) else png_bytes(content)
        path = self.directory / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
        self.paths.append(path)
        return markup.figure(png, caption)


def _read_table(path: Path, required: bool, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """A CSV of the study with a ``group`` column (id columns as strings).

    Returns None when the table is optional and absent or without rows. Raises InputError naming
    the file when it is required and absent or empty, unreadable, or lacks one of ``columns``.
    """
    if not path.is_file():
        if required:
            raise InputError(f"{path}: study table not found (run the aggregate step first)")
        return None
    try:
        table = pd.read_csv(path, dtype={c: str for c in JOB_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as a CSV table ({exc})".splitlines()[0]) from exc
    missing = [c for c in ("method", "grid_id", *columns) if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        if required:
            raise InputError(f"{path}: has no rows")
        return None
    return table.assign(group=[group_label(m, g) for m, g in zip(table["method"], table["grid_id"], strict=True)])


def _primary_metric(metrics: pd.DataFrame) -> tuple[str, bool] | None:
    """The first of PRIMARY_METRICS with a finite value in metrics.csv."""
    for metric, higher in PRIMARY_METRICS:
        if metric in metrics.columns and pd.to_numeric(metrics[metric], errors="coerce").notna().any():
            return metric, higher
    return None


def _study_name(config_text: str, config_path: Path, study_dir: Path) -> str:
    """The config's ``study`` key, else the study folder's name."""
    config = load_yaml_text(config_text, str(config_path))
    if isinstance(config, dict) and isinstance(config.get("study"), str):
        return config["study"]
    return study_dir.name


def load_study(study_dir: Path, config_path: Path) -> Study:
    """Read the study tables and the config text; InputError naming a missing/malformed file."""
    if not config_path.is_file():
        raise InputError(f"{config_path}: study config not found")
    config_text = config_path.read_text()
    _, factors = read_jobs(study_dir / "jobs.tsv")
    failures = read_failures(study_dir)
    # every job may have failed: the report then shows the failures (and the config) only
    metrics = _read_table(study_dir / "metrics.csv", failures.empty, (*JOB_COLUMNS, "runtime_s", "device"))
    summary = _read_table(study_dir / "summary.csv", failures.empty, ("n_pairs",))
    if metrics is None or summary is None:
        metrics = pd.DataFrame(columns=[*JOB_COLUMNS, "runtime_s", "device", "group"])
        summary = pd.DataFrame(columns=["method", "grid_id", "n_pairs", "group"])
    dice = _read_table(study_dir / "dice_per_label.csv", False, ("label", "dice"))
    if dice is not None and not dice["dice"].notna().any():
        dice = None
    return Study(
        name=_study_name(config_text, config_path, study_dir),
        directory=study_dir,
        config_path=config_path,
        config_text=config_text,
        factors=factors,
        metrics=metrics,
        summary=summary,
        dice=dice,
        loss=_read_table(study_dir / "loss_curves.csv", False, ("atlas", "moving", "iteration")),
        primary=_primary_metric(metrics),
        failures=failures,
    )


def best_groups(study: Study) -> dict[str, str]:
    """method -> its best grid point (group name) by the primary metric's mean; empty without one."""
    if study.primary is None:
        return {}
    metric, higher = study.primary
    if f"{metric}_mean" not in study.summary.columns:
        return {}
    grouped = study.summary.dropna(subset=[f"{metric}_mean"]).groupby("method", sort=False)[f"{metric}_mean"]
    index = grouped.idxmax() if higher else grouped.idxmin()
    return {method: study.summary.loc[row, "group"] for method, row in index.items()}


def _primary_text(study: Study) -> str:
    if study.primary is None:
        return "no quality metric (Dice or TRE) in this study"
    metric, higher = study.primary
    return f"{metric} ({'higher' if higher else 'lower'} is better)"


# ----------------------------------------------------------------------------- sections


def config_section(study: Study, sink: FigureSink) -> str:
    """The study config YAML, verbatim."""
    return markup.paragraph(f"From {study.config_path}.") + f'<pre class="config">{escape(study.config_text)}</pre>'


def summary_section(study: Study, sink: FigureSink) -> str:
    """The summary table, best grid point per method highlighted."""
    summary = study.summary
    factors = [f for f in study.factors if f in summary.columns and summary[f].notna().any()]
    texts = [c for c in summary.columns if c.endswith("_text")]
    columns = ["method", *(factors or ["grid_id"]), "n_pairs", *texts]
    best = set(best_groups(study).values())
    intro = markup.paragraph(
        "Mean ± standard deviation over the registered pairs of each method and grid point. "
        f"Highlighted: the best grid point of each method by {_primary_text(study)}."
    )
    headers = [c.removesuffix("_text") for c in columns]
    return intro + markup.table(summary[columns], summary["group"].isin(best).tolist(), headers)


def dice_section(study: Study, sink: FigureSink) -> str:
    """Per-pair mean Dice per grid point and per-label Dice box plots."""
    if "dice_mean" not in study.metrics.columns or study.metrics["dice_mean"].isna().all():
        return markup.note("This study has no label maps, so no Dice is reported.")
    parts = [
        sink.add(
            "dice_mean",
            metric_boxplot(study.metrics, "dice_mean", study.groups),
            "Mean Dice over labels of each pair (points), per method and grid point.",
        )
    ]
    if study.dice is None:
        parts.append(markup.note("No per-label Dice table (dice_per_label.csv is absent or empty)."))
        return "".join(parts)
    groups = study.groups
    caption = "Dice per label: one box per method and grid point, over the pairs."
    if len(groups) * study.dice["label"].nunique() > MAX_LABEL_BOXES:
        groups = list(best_groups(study).values())
        caption = f"Dice per label for the best grid point of each method (of {len(study.groups)} grid points)."
    parts.append(sink.add("dice_per_label", dice_per_label_boxplot(study.dice, groups), caption))
    return "".join(parts)


def runtime_section(study: Study, sink: FigureSink) -> str:
    """Runtime vs the primary metric (or runtime box plots without one)."""
    if study.primary is None:
        figure = metric_boxplot(study.metrics, "runtime_s", study.groups)
        return sink.add("runtime", figure, "Runtime per pair (s), per method and grid point.")
    metric = study.primary[0]
    devices = ", ".join(sorted(study.metrics["device"].dropna().astype(str).unique()))
    caption = f"Runtime per pair (s) vs {metric}, one point per pair and grid point; device(s): {devices}."
    return sink.add("runtime", runtime_scatter(study.metrics, metric), caption)


def loss_section(study: Study, sink: FigureSink) -> str:
    """Loss curves of the first few pairs of each grid point."""
    if study.loss is None:
        return markup.note("No method of this study logged a loss history (e.g. classical methods only).")
    known = {*ID_COLUMNS, *study.factors, "iteration", "group"}
    terms = [c for c in study.loss.columns if c not in known]
    if not terms:
        return markup.note("The loss histories hold iteration numbers but no loss terms.", "warning")
    term = "total" if "total" in terms else terms[0]
    loss = study.loss.assign(pair=study.loss["atlas"] + " → " + study.loss["moving"])
    first_pairs = loss.groupby("group", sort=False)["pair"].unique().map(lambda p: set(p[:MAX_LOSS_PAIRS]))
    loss = loss[[pair in first_pairs[group] for group, pair in zip(loss["group"], loss["pair"], strict=True)]]
    groups = [g for g in study.groups if g in first_pairs.index]
    shown = groups[:MAX_LOSS_GROUPS]
    caption = (
        f"Loss '{term}' vs iteration for up to {MAX_LOSS_PAIRS} pairs per grid point "
        "(log scale where a panel spans more than a decade)."
    )
    if len(shown) < len(groups):
        caption += f" First {len(shown)} of {len(groups)} grid points."
    return sink.add("loss_curves", loss_curve_grid(loss, term, shown), caption)


def before_after_section(study: Study, sink: FigureSink) -> str:
    """Landmark TRE and image similarity before and after registration (empty when not measured)."""
    parts = []
    for before, after, label in BEFORE_AFTER:
        if not {before, after} <= set(study.metrics.columns) or study.metrics[after].isna().all():
            continue
        rows = study.metrics.dropna(subset=[after])
        unregistered = rows.drop_duplicates(["atlas", "moving"]).assign(group="before registration", **{after: lambda d: d[before]})
        data = pd.concat([unregistered, rows], ignore_index=True)
        groups = ["before registration", *[g for g in study.groups if g in set(rows["group"])]]
        caption = f"{label} per pair: before registration (once per pair) and after, per method and grid point."
        parts.append(sink.add(f"before_after_{after}", metric_boxplot(data, after, groups), caption))
    return "".join(parts)


def training_section(study: Study, sink: FigureSink) -> str:
    """Training curves and summary of learned methods; learned vs per-pair methods on the same pairs."""
    runs = load_training_runs(study.directory)
    if not runs:
        return ""
    intro = markup.paragraph(
        "Learned methods are trained once per grid point on the training subjects, then applied to the test "
        f"pairs. Training loss drawn as a running mean over {SMOOTHING_STEPS} steps."
    )
    return "".join(
        [
            intro,
            markup.table(pd.DataFrame([run.summary for run in runs])),
            sink.add("training_curves", training_curves(runs), "Training and validation loss vs optimiser step."),
            "<h3>Learned and per-pair methods on the same test pairs</h3>",
            markup.table(comparison_table(study.metrics, runs)),
        ]
    )


def qc_section(study: Study, sink: FigureSink) -> str:
    """Preprocessing QC pictures (``qc/<subject>.png``): raw vs preprocessed mid-slices with overlays."""
    pictures = sorted((study.directory / "qc").glob("*.png"))
    if not pictures:
        return ""
    shown = pictures[:MAX_QC_IMAGES]
    intro = markup.paragraph(
        "Each subject before (left) and after (right) preprocessing, with label or mask contours"
        + (f"; first {len(shown)} of {len(pictures)} subjects." if len(shown) < len(pictures) else ".")
    )
    return intro + "".join(sink.add(f"qc_{p.stem}", p.read_bytes(), f"Preprocessing QC of {p.stem}.") for p in shown)


def _anova_response(response: str, entry: dict[str, Any], anova_dir: Path, sink: FigureSink) -> str:
    """One response: conclusions, model and table (significant rows highlighted), paired comparisons,
    methods head to head, interaction plot, Tukey tables (independent model)."""
    parts = [f"<h3>{escape(response)}</h3>"]
    conclusions = entry.get("conclusions") or []
    if conclusions:
        parts.append("<ul>" + "".join(f"<li>{escape(text)}</li>" for text in conclusions) + "</ul>")
    parts.append(markup.note(entry.get("message", ""), "info" if entry.get("table") else "warning"))
    if entry.get("table"):
        table = pd.read_csv(anova_dir / entry["table"])
        parts.append(markup.table(table, table["significant"].astype(bool).tolist(), mark="significant"))
    for factor, name in (entry.get("paired") or {}).items():
        parts.append(f"<h4>{escape(factor)}: levels compared within pairs (b − a; Holm-corrected)</h4>")
        pairs = pd.read_csv(anova_dir / name)
        parts.append(markup.table(pairs, pairs["significant"].astype(bool).tolist(), mark="significant"))
        friedman = (entry.get("friedman") or {}).get(factor)
        if friedman:
            parts.append(markup.paragraph(
                f"Friedman test over the levels of {factor}: chi2 {friedman['chi2']:.3g}, p {friedman['p']:.2g}, "
                f"{friedman['n_pairs']} pairs."
            ))
    if entry.get("methods"):
        parts.append(f"<h4>Methods head to head on the same pairs ({escape(response)}, each at its best grid point)</h4>")
        methods = pd.read_csv(anova_dir / entry["methods"])
        parts.append(markup.table(methods, methods["significant"].astype(bool).tolist(), mark="significant"))
    if entry.get("methods_plot"):
        png = (anova_dir / entry["methods_plot"]).read_bytes()
        parts.append(sink.add(f"anova_methods_{response}", png, f"Per-pair differences of {response} between methods."))
    if entry.get("interaction_plot"):
        png = (anova_dir / entry["interaction_plot"]).read_bytes()
        caption = f"Interaction plots of {response}: mean with 95 % bootstrap CI."
        parts.append(sink.add(f"anova_interaction_{response}", png, caption))
    for factor, name in entry.get("tukey", {}).items():
        parts.append(f"<h4>Tukey HSD of {escape(response)} between levels of {escape(factor)}</h4>")
        tukey = pd.read_csv(anova_dir / name)
        parts.append(markup.table(tukey, tukey["reject"].astype(bool).tolist(), mark="significant"))
    return "".join(parts)


def _anova_intro(summary: dict[str, Any]) -> str:
    """Which model ran over which factors, and the row selection."""
    factors = ", ".join(summary.get("factors", []))
    selection = summary.get("selection", {}).get("note", "")
    if summary.get("model", "independent") == "independent":
        return markup.paragraph(
            f"Full factorial ANOVA over {factors} (pairs as independent replicates, anova.model: independent), "
            f"{summary.get('sums_of_squares', '')} sums of squares, alpha {summary.get('alpha')}; {selection}. "
            "Highlighted: significant terms."
        )
    return markup.paragraph(
        f"Repeated-measures analysis over {factors}: every pair is registered in every cell, so the pair is the "
        "subject (AnovaRM when every pair has every cell, else a mixed model with a random intercept per pair; "
        "each response says which ran and why). Levels, methods and the best grid point are compared within "
        f"pairs: paired t and Wilcoxon signed-rank tests, Holm-corrected, mean difference with a seeded bootstrap "
        f"95 % interval over pairs (seed {summary.get('seed')}); alpha {summary.get('alpha')}; {selection}. "
        "Highlighted: significant terms and comparisons."
    )


def anova_section(study: Study, sink: FigureSink) -> str:
    """Statistics from ``anova/anova.json``: conclusions first, then tables, plots and post-hoc tests."""
    anova_dir = study.directory / "anova"
    if not (anova_dir / ANOVA_SUMMARY).is_file():
        return markup.note("No ANOVA results: the study defines no ANOVA factors, or the ANOVA step did not run.")
    summary = read_json_object(anova_dir / ANOVA_SUMMARY, "ANOVA summary file")
    responses = summary.get("responses", {})
    conclusions = [text for entry in responses.values() for text in (entry.get("conclusions") or [])]
    opening = ""
    if conclusions:
        opening = "<h3>Conclusions</h3><ul>" + "".join(f"<li>{escape(t)}</li>" for t in conclusions) + "</ul>"
    return opening + _anova_intro(summary) + "".join(_anova_response(r, e, anova_dir, sink) for r, e in responses.items())


def metrics_section(study: Study, sink: FigureSink) -> str:
    """The metrics of this study with their direction, unit and convention (from the metric registry)."""
    present = [m for m in registry.METRICS if m.name in study.metrics.columns and study.metrics[m.name].notna().any()]
    if not present:
        return ""
    table = pd.DataFrame({
        "metric": [m.name for m in present],
        "better": ["higher" if m.higher_is_better else "lower" if m.higher_is_better is False else "–" for m in present],
        "unit": [m.unit or "–" for m in present],
        "convention": [m.convention for m in present],
        "robustness column": [m.robust_column or "–" for m in present],
    })
    intro = markup.paragraph(
        "How each metric of this study is computed. hd95_mean and the _l2r variants follow Learn2Reg's evaluation, "
        "the _nodeo variants the NODEO paper, for comparison with published tables; robustness columns of summary.csv are the 30 % "
        "quantile over pairs (higher is better, Learn2Reg's DSC30) or the 70 % quantile (lower is better)."
    )
    return intro + markup.table(table)


def structures_section(study: Study, sink: FigureSink) -> str:
    """Per-structure Dice (mean over pairs) of each method's best grid point, with structure names."""
    if study.dice is None or "structure" not in study.dice.columns:
        return ""
    groups = list(best_groups(study).values()) or study.groups
    rows = study.dice[study.dice["group"].isin(groups)]
    table = rows.pivot_table(index=["label", "structure"], columns="group", values="dice", aggfunc="mean")
    table = table[[g for g in groups if g in table.columns]].reset_index()
    intro = markup.paragraph("Mean Dice over pairs per structure (FreeSurferColorLUT names), best grid point of each method.")
    return intro + markup.table(table)


def _example_rows(study: Study) -> list[tuple[str, pd.Series]]:
    """(kind, metrics row) for the best, median and worst pair by the primary metric (distinct rows)."""
    if study.primary is None:
        return [("first", study.metrics.iloc[0])]
    metric, higher = study.primary
    ranked = study.metrics.dropna(subset=[metric]).sort_values(metric, ascending=not higher, kind="stable")
    picks = {"best": 0, "median": (len(ranked) - 1) // 2, "worst": len(ranked) - 1}
    rows, seen = [], set()
    for kind, position in picks.items():
        if position not in seen:
            seen.add(position)
            rows.append((kind, ranked.iloc[position]))
    return rows


def _facts(row: pd.Series) -> list[str]:
    """Text lines describing a pair for the example figure."""
    names = ["dice_mean", "dice_mean_before", "tre_mean_mm", "hd95_mean", "neg_jac_ratio", "sdlogj", "runtime_s"]
    lines = [f"atlas (fixed): {row['atlas']}", f"moving: {row['moving']}"]
    return lines + [f"{n}: {row[n]:.4g}" for n in names if n in row.index and pd.notna(row[n])]


def examples_section(study: Study, sink: FigureSink) -> str:
    """Best, median and worst pair: images, differences, deformation grid, Jacobian determinant."""
    intro = markup.paragraph(
        f"Pairs ranked by {_primary_text(study)} over all methods and grid points. The fixed image is the "
        "atlas; the grid shows where each fixed-grid point x is sent (x + u(x), in the moving image); the "
        "Jacobian determinant uses a diverging colour map centred at 1 (blue < 1 < red, <= 0: folding)."
    )
    parts = [intro]
    for kind, row in _example_rows(study):
        example = load_example(Path(row["reg_dir"]), Path(row["log"]))
        title = f"{kind} pair: {row['group']}, {row['atlas']} ← {row['moving']}"
        parts.append(f"<h3>{escape(kind.capitalize())} pair</h3>")
        parts.append(sink.add(f"example_{kind}", example_figure(example, title, _facts(row)), title))
    return "".join(parts)


def _provenance_logs(study: Study) -> list[tuple[str, dict[str, Any]]]:
    """(group, log.json) of the first pair of each grid point."""
    firsts = study.metrics.drop_duplicates("group")
    pairs = zip(firsts["group"], firsts["log"], strict=True)
    return [(group, read_json_object(Path(log), "registration log file")) for group, log in pairs]


def provenance_section(study: Study, sink: FigureSink) -> str:
    """Software versions, devices, resolved parameters and the command that built the report."""
    logs = _provenance_logs(study)
    versions: dict[str, set[str]] = {}
    for _, log in logs:
        for package, version in (log.get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
    version_table = pd.DataFrame(
        {"package": list(versions), "version(s)": [", ".join(sorted(v)) for v in versions.values()]}
    )
    devices = study.metrics["device"].astype(str).value_counts().rename_axis("device").reset_index(name="jobs")
    params = pd.DataFrame(
        {
            "method · grid point": [g for g, _ in logs],
            "seed": [str(log.get("seed")) for _, log in logs],
            "resolved parameters": [json.dumps(log.get("params"), sort_keys=True) for _, log in logs],
        }
    )
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    builder = (
        f"registration_core {registration_core.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )
    return "".join(
        [
            "<h3>Software versions (registration logs, first pair of each grid point)</h3>",
            markup.table(version_table) if versions else markup.note("The logs record no versions.", "warning"),
            "<h3>Devices</h3>",
            markup.table(devices),
            "<h3>Resolved parameters</h3>",
            markup.table(params),
            "<h3>Report</h3>",
            markup.paragraph(f"Built with {builder} by:"),
            f"<pre>{escape(command)}</pre>",
        ]
    )


Section = Callable[[Study, FigureSink], str]
SECTIONS: tuple[tuple[str, str, Section], ...] = (
    ("config", "Study configuration", config_section),
    ("summary", "Summary", summary_section),
    ("dice", "Dice", dice_section),
    ("before_after", "Before and after registration", before_after_section),
    ("runtime", "Runtime", runtime_section),
    ("training", "Learned methods", training_section),
    ("loss", "Loss curves", loss_section),
    ("metrics", "Metrics and conventions", metrics_section),
    ("structures", "Dice per structure", structures_section),
    ("anova", "Statistics", anova_section),
    ("examples", "Examples", examples_section),
    ("qc", "Preprocessing QC", qc_section),
    ("provenance", "Provenance", provenance_section),
)


def _header(study: Study) -> str:
    """Study name, date and counts."""
    metrics = study.metrics
    counts = [
        ("pairs", len(metrics[["atlas", "moving"]].drop_duplicates())),
        ("methods", metrics["method"].nunique()),
        ("grid points", len(study.groups)),
        ("registrations", len(metrics)),
        ("failed", len(study.failures)),
    ]
    badges = "".join(f'<span class="count"><b>{n}</b> {escape(label)}</span>' for label, n in counts)
    date = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"<h1>Registration study: {escape(study.name)}</h1>"
        f'<p class="meta">Report generated {date} from {escape(str(study.directory))}</p>'
        f'<p class="counts">{badges}</p>'
        + failures_block(study.failures, len(metrics) + len(study.failures), table_file(study.directory, "failures"))
    )


def render(study: Study, sink: FigureSink) -> str:
    """The whole HTML page."""
    package = resources.files("registration_core.report")
    template = Template(package.joinpath("template.html").read_text(encoding="utf-8"))
    applicable = SECTIONS if not study.metrics.empty else SECTIONS[:1]  # nothing succeeded: the config only
    built = [(sid, title, build(study, sink)) for sid, title, build in applicable]
    built = [(sid, title, html) for sid, title, html in built if html]  # sections that do not apply are left out
    sections = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>' for sid, title, html in built)
    toc = "".join(f'<li><a href="#{sid}">{escape(title)}</a></li>' for sid, title, _ in built)
    return template.substitute(
        title=escape(f"{study.name}: registration study report"),
        css=package.joinpath("style.css").read_text(encoding="utf-8"),
        header=_header(study),
        toc=f"<ol>{toc}</ol>",
        sections=sections,
    )


def build_report(study_dir: Path, config_path: Path, out_html: Path) -> list[Path]:
    """Write the study's self-contained HTML report and its figures.

    Args:
        study_dir: ``results/<study>`` (see the module docstring for what it must hold).
        config_path: the study config YAML (shown verbatim; its ``study`` key names the report).
        out_html: the page to write (atomically), e.g. ``reports/<study>/index.html``.

    Returns:
        The PNG files written to ``out_html.parent / "figures"``, in page order.

    Raises:
        InputError naming the file: a missing or malformed study table, config, log or image.
    """
    study = load_study(Path(study_dir), Path(config_path))
    sink = FigureSink(Path(out_html).parent / "figures")
    page = render(study, sink)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return sink.paths
