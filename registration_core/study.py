"""Study planning: a config file -> validated config -> subjects, pairs, grid points and jobs.

A *study* registers moving images onto atlases (fixed = atlas, moving = the image deformed onto
it) with every method at every point of its hyperparameter grid. One *job* is one
method x grid point x (atlas, moving) pair. This module holds no image code and no Snakemake: the
workflow (``workflow/rules/common.smk``) builds one :class:`Study` at parse time and reads every
file name, parameter and job list from it, and ``python -m registration_core plan`` writes the same
jobs table. Relative dataset paths are relative to ``base_dir`` (the run's working directory).

Path templates (:data:`PATHS`) are relative to the working directory; ``{study}`` is the study
name, ``{grid_id}`` is ``key~value__key~value`` over the method's grid keys in config order (or
``default`` for a method without a grid), subjects are ids without ``__`` so that
``{atlas}__{moving}`` splits uniquely.
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .datasets import discover_subjects, subject_files
from .errors import InputError
from .io import atomic_path
from .methods import available_methods, get_method
from .preprocess import validate_steps

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*"
"""Subject, dataset, study and method ids: no ``/``, no ``__``, no leading or trailing ``_``."""
VALUE_PATTERN = r"[A-Za-z0-9.+-]+"
"""Formatted grid values (see :func:`format_value`)."""
GRID_ID_PATTERN = rf"default|[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*~{VALUE_PATTERN}(?:__[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*~{VALUE_PATTERN})*"
"""Grid ids: ``default`` or ``key~value`` items joined by ``__``."""
DEFAULT_GRID_ID = "default"
DEMO_PREFIX = "demo-"
"""Demo subjects are ``demo-00``, ``demo-01``, ...; subject ``demo-00`` is the undeformed template."""

PATHS: dict[str, str] = {
    "config": "results/{study}/config.yaml",
    "jobs": "results/{study}/jobs.tsv",
    "demo_image": "results/{study}/data/{subject}/image.nii.gz",
    "demo_labels": "results/{study}/data/{subject}/labels.nii.gz",
    "prep_image": "results/{study}/prep/{subject}/image.nii.gz",
    "prep_labels": "results/{study}/prep/{subject}/labels.nii.gz",
    "reg_dir": "results/{study}/reg/{method}/{grid_id}/{atlas}__{moving}",
    "metrics": "results/{study}/eval/{method}/{grid_id}/{atlas}__{moving}.json",
    "metrics_table": "results/{study}/metrics.csv",
    "dice_table": "results/{study}/dice_per_label.csv",
    "summary_table": "results/{study}/summary.csv",
    "loss_table": "results/{study}/loss_curves.csv",
    "anova_dir": "results/{study}/anova",
    "report": "reports/{study}/index.html",
    "report_figures": "reports/{study}/figures",
    "logs": "logs/{study}",
}
"""Output locations relative to the working directory (the file contract of the workflow)."""
JOB_COLUMNS = ("study", "dataset", "method", "grid_id", "atlas", "moving", "reg_dir", "metrics", "log")
"""Leading columns of the jobs table; one column per grid factor follows."""


# ---------------------------------------------------------------------------------------------
# Config validation


def _extend_with_defaults(validator_class: type) -> type:
    """A jsonschema validator class that fills ``default`` values of ``properties`` in place."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping, instance: Any, schema: Mapping) -> Iterator:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config JSON schema (YAML file); InputError when it cannot be read."""
    if not path.is_file():
        raise InputError(f"config schema {path} not found (it ships with the workflow folder)")
    return yaml.safe_load(path.read_text())


def _key_path(path: Sequence[Any]) -> str:
    """``["methods", "nodeo", "grid", "lr", 0]`` -> ``config key methods.nodeo.grid.lr[0]``;
    the root is ``config``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"config key {text}" if text else "config"


def _allowed_keys(schema: Mapping[str, Any], instance: Any, validator: Any) -> list[str]:
    """Keys ``schema`` defines for ``instance``: its properties and those of matching if/then branches."""
    keys = list(schema.get("properties", {}))
    for branch in schema.get("allOf", []):
        if "if" in branch and validator.evolve(schema=branch["if"]).is_valid(instance):
            keys += list(branch.get("then", {}).get("properties", {}))
    return sorted(set(keys))


def _describe(error: jsonschema.ValidationError, validator: Any) -> str:
    """One line: the key path and what is allowed there."""
    where = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(schema, error.instance, validator)
        extra = re.findall(r"'([^']+)'", error.message)
        unknown = ", ".join(extra) if extra else "?"
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown key {unknown}{hint}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"
    description = schema.get("description")
    if error.validator in ("anyOf", "oneOf") and isinstance(description, str):
        return f"{where}: not a valid value; expected: {description.strip()}"
    return f"{where}: {error.message}"


def validate_config(raw: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``raw`` validated against the schema with its defaults filled in.

    Raises InputError naming the key path (e.g. ``methods.nodeo.grid.lr``) and what is allowed.
    Only the structure is checked here; method parameters and subjects are checked by :class:`Study`.
    """
    if not isinstance(raw, Mapping):
        raise InputError(f"config: expected a mapping of keys, got {type(raw).__name__}")
    config = copy.deepcopy(dict(raw))
    validator = _DefaultFillingValidator(schema if schema is not None else load_schema())
    errors = list(validator.iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise InputError(_describe(best, validator))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML study config and return it validated with defaults filled in (InputError on error)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise InputError(f"config file {path} is empty")
    try:
        return validate_config(raw)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def write_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write a (resolved) config as YAML, keys in their config order, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None))


# ---------------------------------------------------------------------------------------------
# Grid points


def value_text(value: Any) -> str:
    """Text of a parameter value in job tables and ``--param`` arguments: booleans are
    ``true``/``false``, None is ``none``, numbers use Python's shortest round-trip text
    (``0.005``, ``1e-05``), strings are kept."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def format_value(value: Any) -> str:
    """:func:`value_text` of a grid value, which becomes part of a path: InputError for a
    non-finite number or text outside ``[A-Za-z0-9.+-]``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"grid value {value!r} is not a finite number")
    text = value_text(value)
    if not re.fullmatch(VALUE_PATTERN, text):
        raise InputError(f"grid value {value!r} may only use letters, digits and . + -")
    return text


def grid_id(values: Mapping[str, Any]) -> str:
    """``key~value__key~value`` in the mapping's order, or ``default`` when empty."""
    if not values:
        return DEFAULT_GRID_ID
    return "__".join(f"{key}~{format_value(value)}" for key, value in values.items())


@dataclass(frozen=True)
class GridPoint:
    """One point of a method's grid.

    ``values``: grid key -> raw value (config order). ``params``: the method's fixed params merged
    with ``values`` (what the register command receives). ``resolved``: every parameter of the
    method after defaults, preset and ``params`` (what the jobs table reports for factors).
    """

    method: str
    grid_id: str
    values: dict[str, Any]
    params: dict[str, Any]
    resolved: dict[str, Any]


def _check_keys(method: str, section: str, keys: Sequence[str], allowed: Mapping[str, Any]) -> None:
    for key in keys:
        if key not in allowed:
            raise InputError(
                f"config key methods.{method}.{section}.{key}: unknown parameter of method {method} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )


def _resolve(method: str, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return get_method(method).resolve_params(raw)
    except InputError as exc:
        raise InputError(f"config key {where}: {exc}") from None


def method_grid(method: str, spec: Mapping[str, Any], extra_params: Mapping[str, Any] | None = None) -> list[GridPoint]:
    """Grid points of one method config ``{params, grid}``, validated through the method's schema.

    ``extra_params`` (e.g. ``device``) are added to ``params`` unless the config sets them.
    Errors name ``methods.<method>.params.<key>`` or ``methods.<method>.grid.<key>``.
    """
    if method not in available_methods():
        raise InputError(f"config key methods.{method}: unknown method (available: {', '.join(available_methods())})")
    schema = get_method(method).params
    params = dict(spec.get("params", {}))
    grid = dict(spec.get("grid", {}))
    _check_keys(method, "params", list(params), schema)
    _check_keys(method, "grid", list(grid), schema)
    for key in grid:
        if key in params:
            raise InputError(f"config key methods.{method}.grid.{key}: also set in methods.{method}.params; set it in one place")
    _resolve(method, f"methods.{method}.params", params)
    for key, values in grid.items():
        ids = set()
        for value in values:
            _resolve(method, f"methods.{method}.grid.{key}", {**params, key: value})
            try:
                ids.add(format_value(value))
            except InputError as exc:
                raise InputError(f"config key methods.{method}.grid.{key}: {exc}") from None
        if len(ids) != len(values):
            raise InputError(f"config key methods.{method}.grid.{key}: values repeat once written as text")
    for key, value in (extra_params or {}).items():
        if key in schema and key not in params and key not in grid:
            params[key] = value
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        gid = grid_id(values)
        merged = {**params, **values}
        resolved = _resolve(method, f"methods.{method}.grid (point {gid})", merged)
        points.append(GridPoint(method, gid, values, merged, resolved))
    return points


# ---------------------------------------------------------------------------------------------
# Datasets and pairs


@dataclass(frozen=True)
class Dataset:
    """The subjects of the dataset a study registers and their raw input files.

    ``files[subject]`` = {"image": path, "labels": path} (relative to the working directory when
    the config path is relative). For the demo adapter they are files the workflow generates.
    ``demo`` holds the generator settings (empty for folder datasets).
    """

    name: str
    adapter: str
    subjects: tuple[str, ...]
    files: dict[str, dict[str, str]]
    preprocess: tuple[dict[str, Any], ...]
    demo: dict[str, Any]


def demo_subject_id(index: int) -> str:
    """Id of demo subject ``index``: ``demo-00``, ``demo-01``, ..."""
    return f"{DEMO_PREFIX}{index:02d}"


def demo_subject_index(subject: str) -> int:
    """Index of a demo subject id (inverse of :func:`demo_subject_id`); InputError otherwise."""
    match = re.fullmatch(rf"{DEMO_PREFIX}(\d+)", subject)
    if match is None:
        raise InputError(f"subject '{subject}' is not a demo subject id ({DEMO_PREFIX}NN)")
    return int(match.group(1))


def _build_dataset(study: str, name: str, spec: Mapping[str, Any], base_dir: Path) -> Dataset:
    where = f"datasets.{name}"
    steps = tuple(dict(step) for step in spec["preprocess"])
    try:
        validate_steps(steps)
    except InputError as exc:
        raise InputError(f"config key {where}.preprocess: {exc}") from None
    if spec["adapter"] == "demo":
        subjects = tuple(demo_subject_id(i) for i in range(spec["n_subjects"]))
        files = {
            s: {kind: PATHS[f"demo_{kind}"].format(study=study, subject=s) for kind in ("image", "labels")}
            for s in subjects
        }
        demo = {key: spec[key] for key in ("n_subjects", "seed", "spacing_mm", "max_disp_mm")}
        return Dataset(name, "demo", subjects, files, steps, demo)
    root = Path(spec["path"])
    root = root if root.is_absolute() else base_dir / root
    patterns = {"image": spec["image"], "labels": spec["labels"]}
    try:
        subjects = tuple(discover_subjects(root, spec["image"], spec.get("subjects")))
        files = {s: {k: str(v) for k, v in subject_files(root, patterns, s).items()} for s in subjects}
    except InputError as exc:
        raise InputError(f"config key {where}: {exc}") from None
    for subject in subjects:
        if not re.fullmatch(ID_PATTERN, subject):
            raise InputError(f"config key {where}: subject id '{subject}' may only use letters, digits, . - and single _")
    return Dataset(name, "folder", subjects, files, steps, {})


def _check_subjects(where: str, names: Sequence[str], dataset: Dataset) -> None:
    known = set(dataset.subjects)
    for name in names:
        if name not in known:
            shown = ", ".join(dataset.subjects[:8]) + (", ..." if len(dataset.subjects) > 8 else "")
            raise InputError(f"config key {where}: subject '{name}' is not in dataset {dataset.name} (subjects: {shown})")


def plan_pairs(spec: Mapping[str, Any], dataset: Dataset) -> list[tuple[str, str]]:
    """(atlas, moving) pairs from the ``pairs`` config, atlas-major; InputError names the key."""
    if "list" in spec:
        pairs = [tuple(pair) for pair in spec["list"]]
        for i, (atlas, moving) in enumerate(pairs):
            _check_subjects(f"pairs.list[{i}]", (atlas, moving), dataset)
            if atlas == moving:
                raise InputError(f"config key pairs.list[{i}]: '{atlas}' is paired with itself")
        if len(set(pairs)) != len(pairs):
            raise InputError("config key pairs.list: a pair is listed twice")
        return pairs
    atlases = list(spec["atlases"])
    _check_subjects("pairs.atlases", atlases, dataset)
    if spec["moving"] == "rest":
        moving = [s for s in dataset.subjects if s not in set(atlases)]
        if not moving:
            raise InputError("config key pairs.moving: 'rest' leaves no subject besides the atlases")
    else:
        moving = list(spec["moving"])
        _check_subjects("pairs.moving", moving, dataset)
        for atlas in atlases:
            if atlas in moving:
                raise InputError(f"config key pairs.moving: atlas '{atlas}' is among its own moving images")
    return [(atlas, m) for atlas in atlases for m in moving]


# ---------------------------------------------------------------------------------------------
# Study


@dataclass(frozen=True)
class Job:
    """One registration + evaluation: ``moving`` onto ``atlas`` with one method's grid point."""

    study: str
    dataset: str
    method: str
    grid_id: str
    atlas: str
    moving: str

    def path(self, key: str) -> str:
        """A per-job path from :data:`PATHS` (``reg_dir`` or ``metrics``)."""
        return PATHS[key].format(
            study=self.study, method=self.method, grid_id=self.grid_id, atlas=self.atlas, moving=self.moving
        )


class Study:
    """A planned study: config (validated, defaults and ANOVA factors resolved), dataset, pairs,
    grid points per method and the jobs (method x grid point x pair, in that nesting order)."""

    def __init__(self, config: Mapping[str, Any], base_dir: str | Path = ".") -> None:
        """``config``: a mapping as read from YAML (validated again here); ``base_dir``: where
        relative dataset paths start. Raises InputError naming the offending key."""
        self.config = validate_config(config)
        self.name: str = self.config["study"]
        self.base_dir = Path(base_dir)
        self.dataset = self._pairs_dataset()
        self.pairs = plan_pairs(self.config["pairs"], self.dataset)
        self.grid = {
            method: method_grid(method, spec, self._extra_params(method))
            for method, spec in self.config["methods"].items()
        }
        self._points = {(p.method, p.grid_id): p for points in self.grid.values() for p in points}
        self.factors = list(dict.fromkeys(key for spec in self.config["methods"].values() for key in spec["grid"]))
        self.config["anova"]["factors"] = self._anova_factors()
        self.jobs = [
            Job(self.name, self.dataset.name, point.method, point.grid_id, atlas, moving)
            for points in self.grid.values()
            for point in points
            for atlas, moving in self.pairs
        ]
        self._check_size()

    # -- construction helpers
    def _pairs_dataset(self) -> Dataset:
        datasets = self.config["datasets"]
        name = self.config["pairs"].get("dataset")
        if name is None:
            if len(datasets) != 1:
                raise InputError(f"config key pairs.dataset: required when there are several datasets ({', '.join(datasets)})")
            name = next(iter(datasets))
        if name not in datasets:
            raise InputError(f"config key pairs.dataset: '{name}' is not a dataset (datasets: {', '.join(datasets)})")
        return _build_dataset(self.name, name, datasets[name], self.base_dir)

    def _extra_params(self, method: str) -> dict[str, Any]:
        uses_gpu = self.config["use_gpu"] and method in available_methods() and get_method(method).uses_torch
        return {"device": "cuda"} if uses_gpu else {}

    def _anova_factors(self) -> list[str]:
        factors = self.config["anova"]["factors"]
        if factors is None:
            levels: dict[str, set[str]] = {}
            for spec in self.config["methods"].values():
                for key, values in spec["grid"].items():
                    levels.setdefault(key, set()).update(format_value(v) for v in values)
            return [key for key in self.factors if len(levels[key]) > 1]
        allowed = [*self.factors, "method"]
        for factor in factors:
            if factor not in allowed:
                raise InputError(f"config key anova.factors: '{factor}' is not a grid key (allowed: {', '.join(allowed)})")
        return list(factors)

    def _check_size(self) -> None:
        n_jobs, limit = len(self.jobs), self.config["max_jobs"]
        if n_jobs > limit and not self.config["confirm_large_study"]:
            raise InputError(
                f"config key max_jobs: the study has {n_jobs} registration jobs, more than max_jobs ({limit}); "
                "set confirm_large_study: true to run it"
            )

    # -- lookups used by the workflow
    def path(self, key: str, **fields: str) -> str:
        """A path template of :data:`PATHS` with the study filled in (and any ``fields`` given);
        other ``{placeholders}`` are kept for Snakemake wildcards."""
        template = PATHS[key]
        values = {name: "{" + name + "}" for name in re.findall(r"\{(\w+)\}", template)}
        return template.format(**{**values, "study": self.name, **fields})

    def grid_point(self, method: str, grid_id_: str) -> GridPoint:
        """The grid point of ``method`` called ``grid_id_`` (KeyError if the study has none)."""
        return self._points[(method, grid_id_)]

    def register_resources(self, method: str) -> dict[str, int]:
        """threads, mem_mb, runtime (minutes) and gpu (0 or 1) of ``method``'s registration jobs."""
        resources = {**self.config["resources"]["register"], **self.config["methods"][method].get("resources", {})}
        resources["gpu"] = int(bool(self._extra_params(method)))
        return resources

    def evaluate_label_args(self) -> list[str]:
        """``evaluate`` arguments selecting the scored labels (empty for ``all``)."""
        labels = self.config["metrics"]["labels"]
        if isinstance(labels, list):
            return ["--labels", ",".join(str(label) for label in labels)]
        if labels == "all":
            return []
        path = Path(labels) if Path(labels).is_absolute() else self.base_dir / labels
        if not path.is_file():
            raise InputError(f"config key metrics.labels: label file {path} not found (or use 'all' or a list)")
        return ["--labels-file", str(path)]

    def jobs_by_rule(self) -> dict[str, int]:
        """Number of jobs of each per-item rule (for the parse-time summary)."""
        subjects = {s for pair in self.pairs for s in pair}
        counts = {"prepare": len(subjects), "register": len(self.jobs), "evaluate": len(self.jobs)}
        if self.dataset.adapter == "demo":
            counts = {"demo_subject": len(subjects), **counts}
        return counts

    def describe(self) -> str:
        """One line: subjects, pairs, grid points per method and jobs per rule."""
        grids = ", ".join(f"{method} {len(points)} grid points" for method, points in self.grid.items())
        counts = ", ".join(f"{rule} {count}" for rule, count in self.jobs_by_rule().items())
        return (
            f"study {self.name}: {len(self.dataset.subjects)} subjects, {len(self.pairs)} pairs, {grids}; "
            f"jobs per rule: {counts}"
        )

    def jobs_table(self) -> list[dict[str, str]]:
        """One row per job: :data:`JOB_COLUMNS` then one column per grid factor (union over
        methods, config order). A factor that is a fixed or default parameter of a method shows
        that value; it is empty for a method without that parameter."""
        rows = []
        for job in self.jobs:
            point = self.grid_point(job.method, job.grid_id)
            reg_dir = job.path("reg_dir")
            row = {
                "study": job.study, "dataset": job.dataset, "method": job.method, "grid_id": job.grid_id,
                "atlas": job.atlas, "moving": job.moving, "reg_dir": reg_dir,
                "metrics": job.path("metrics"), "log": f"{reg_dir}/log.json",
            }
            for factor in self.factors:
                value = point.values.get(factor, point.resolved.get(factor, ""))
                row[factor] = "" if value in ("", None) else value_text(value)
            rows.append(row)
        return rows


def write_jobs_table(config_path: str | Path, out_tsv: str | Path, base_dir: str | Path = ".") -> int:
    """Plan the study of ``config_path`` and write its jobs table (TSV); returns the number of jobs."""
    study = Study(load_config(config_path), base_dir)
    rows = study.jobs_table()
    columns = [*JOB_COLUMNS, *study.factors]
    with atomic_path(out_tsv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
