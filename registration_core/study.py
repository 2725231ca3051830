"""Study planning: a config file -> validated config -> subjects, pairs, grid points and jobs.

A *study* registers moving images onto atlases (fixed = atlas, moving = the image deformed onto
it) with every method at every point of its hyperparameter grid. One *job* is one
method x grid point x (atlas, moving) pair. This module holds no image code and no Snakemake: the
workflow (``workflow/rules/common.smk``) builds one :class:`Study` at parse time and reads every
file name, parameter and job list from it, and ``python -m registration_core plan`` writes the same
jobs table. Relative dataset paths are relative to ``base_dir`` (the run's working directory).

Datasets are read by the adapters of :mod:`registration_core.datasets` (their manifest) or made
by the demo generator; a ``truth`` dataset deforms a prepared subject of another dataset by a
known displacement. Labels, landmarks and masks are optional per subject and used wherever they
exist. Only the datasets a study uses (its pairs, a truth base, training sets) are read.
Learned methods (``Method.trainable``) are trained per grid point on subjects that appear in no
registered pair.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .align import check_align_settings
from .datasets import ADAPTER_KEYS, LandmarkImport, RawImport, build_manifest
from .errors import InputError
from .io import atomic_path
from .methods import available_methods, get_method
from .preprocess import validate_steps
from .resources import register_resources as estimate_register_resources

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
    "train_dir": "results/{study}/train/{method}/{grid_id}",
    "model": "results/{study}/train/{method}/{grid_id}/model.pt",
    "train_log": "results/{study}/train/{method}/{grid_id}/log.json",
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
# Datasets


@dataclass(frozen=True)
class Dataset:
    """A dataset of the study: its subjects, the files its ``prepare`` jobs read and its settings.

    ``files[subject]`` maps ``image`` and, when the subject has them, ``labels``, ``landmarks``
    and ``mask`` to paths relative to the working directory (or absolute). Files the workflow
    makes first are listed under ``results/<study>/data/<subject>/``: the demo generator's
    outputs, NIfTI converted from ``raw_imports``, landmark CSVs converted from
    ``landmark_imports`` and lung masks computed when the config sets ``make_mask``. ``pairs`` are the
    (fixed, moving) pairs the dataset defines (None: none); ``demo`` the generator settings;
    ``align`` the settings of :func:`registration_core.align.align_to_fixed` (None: no
    pre-alignment); ``mask`` the settings of the ``lung_mask`` step that computes each subject's
    mask from its raw image (config ``make_mask``; None: masks come from the dataset's files, if any).
    """

    name: str
    adapter: str
    subjects: tuple[str, ...]
    files: dict[str, dict[str, str]]
    preprocess: tuple[dict[str, Any], ...]
    pairs: tuple[tuple[str, str], ...] | None = None
    raw_imports: dict[str, RawImport] = field(default_factory=dict)
    landmark_imports: dict[str, LandmarkImport] = field(default_factory=dict)
    demo: dict[str, Any] = field(default_factory=dict)
    align: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None

    @property
    def reference(self) -> str | None:
        """The subject the ``affine_align`` preprocessing steps register onto (None: no such step)."""
        return next((step["reference"] for step in self.preprocess if step["step"] == "affine_align"), None)


@dataclass(frozen=True)
class Truth:
    """Known-truth pairs made from one prepared subject (``truth`` adapter).

    The fixed image is ``subject`` of dataset ``base`` after its preprocessing (mask included);
    each moving image ``movers[k]`` (``<subject>-m<k>``) is that image deformed by a known
    displacement (``synth-pair`` command, seed ``seed + k``). ``settings`` hold motion,
    max_disp_mm, noise_std and n_landmarks.
    """

    dataset: str
    base: str
    subject: str
    movers: tuple[str, ...]
    seed: int
    settings: dict[str, Any]

    def cli_args(self, mover: str) -> list[str]:
        """``synth-pair`` arguments of one moving subject (inputs and ``--out-dir`` excluded)."""
        s = self.settings
        return [
            "--motion", s["motion"], "--max-disp-mm", value_text(s["max_disp_mm"]),
            "--noise-std", value_text(s["noise_std"]), "--seed", str(self.seed + self.movers.index(mover)),
            "--n-landmarks", str(s["n_landmarks"]),
        ]


@dataclass(frozen=True)
class Training:
    """Training set of a learned method: ``subjects`` (and ``val_subjects``) of dataset ``dataset``,
    pre-aligned to subject ``align_to`` with the dataset's ``align`` settings (None: as prepared)."""

    dataset: str
    subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]
    align_to: str | None = None


REGISTER_ONLY_PARAMS = ("checkpoint", "io_steps", "io_lr")
"""Parameters of a learned method used at registration only (the checkpoint and instance
optimisation; see ``registration_core.training.RUNTIME_PARAMS``): grid points that differ only in
them register with one trained model."""
STUDY_DATASET_KEYS = ("adapter", "preprocess", "align", "make_mask")
"""Dataset keys the study reads for every adapter; the adapter reads the others."""
TRUTH_FILES = {
    "fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "moving_labels": "moving_labels.nii.gz",
    "mask": "mask.nii.gz", "truth_displacement": "truth_displacement.nii.gz",
    "fixed_landmarks": "fixed_landmarks.csv", "moving_landmarks": "moving_landmarks.csv",
}
"""Files ``synth-pair --out-dir DIR`` writes (``moving_labels`` / ``mask`` only for labelled / masked input)."""


def demo_subject_id(index: int) -> str:
    """Id of demo subject ``index``: ``demo-00``, ``demo-01``, ..."""
    return f"{DEMO_PREFIX}{index:02d}"


def demo_subject_index(subject: str) -> int:
    """Index of a demo subject id (inverse of :func:`demo_subject_id`); InputError otherwise."""
    match = re.fullmatch(rf"{DEMO_PREFIX}(\d+)", subject)
    if match is None:
        raise InputError(f"subject '{subject}' is not a demo subject id ({DEMO_PREFIX}NN)")
    return int(match.group(1))


def _study_settings(where: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The study's own dataset settings (preprocess, align, mask), validated; InputError names the key."""
    steps = tuple(dict(step) for step in spec.get("preprocess", []))
    try:
        validate_steps(steps)
    except InputError as exc:
        raise InputError(f"config key {where}.preprocess: {exc}") from None
    align = spec.get("align")
    if align is not None:
        try:
            align = check_align_settings(dict(align))
        except InputError as exc:
            raise InputError(f"config key {where}.align: {exc}") from None
    mask = spec.get("make_mask")
    if mask is not None:
        mask = {key: value for key, value in mask.items() if key != "step"}
        try:
            validate_steps([{"step": "lung_mask", **mask}])
        except InputError as exc:
            raise InputError(f"config key {where}.make_mask: {exc}") from None
    return {"preprocess": steps, "align": align, "mask": mask}


def _demo_dataset(study: str, name: str, spec: Mapping[str, Any]) -> Dataset:
    subjects = tuple(demo_subject_id(i) for i in range(spec["n_subjects"]))
    files = {s: {kind: PATHS[f"raw_{kind}"].format(study=study, subject=s) for kind in ("image", "labels")} for s in subjects}
    demo = {key: spec[key] for key in ("n_subjects", "seed", "spacing_mm", "max_disp_mm")}
    return Dataset(name, "demo", subjects, files, demo=demo, **_study_settings(f"datasets.{name}", spec))


def _manifest_dataset(study: str, name: str, spec: Mapping[str, Any], base_dir: Path) -> Dataset:
    """A dataset read by an adapter of :mod:`registration_core.datasets` (folder, dirlab, ...)."""
    where = f"datasets.{name}"
    adapter = spec["adapter"]
    allowed = [*STUDY_DATASET_KEYS, *ADAPTER_KEYS[adapter]]
    for key in spec:
        if key not in allowed:
            raise InputError(f"config key {where}: unknown key {key} (allowed: {', '.join(sorted(allowed))})")
    settings = _study_settings(where, spec)
    manifest = build_manifest(adapter, {k: v for k, v in spec.items() if k in ADAPTER_KEYS[adapter]}, base_dir, where)
    files: dict[str, dict[str, str]] = {}
    for subject in manifest.subjects:
        if not re.fullmatch(ID_PATTERN, subject):
            raise InputError(f"config key {where}: subject id '{subject}' may only use letters, digits, . - and single _")
        entry = {key: value for key, value in vars(manifest.files[subject]).items() if value is not None}
        if subject in manifest.raw_imports:
            entry["image"] = PATHS["raw_image"].format(study=study, subject=subject)
        if subject in manifest.landmark_imports:
            entry["landmarks"] = PATHS["raw_landmarks"].format(study=study, subject=subject)
        if settings["mask"] is not None:
            entry["mask"] = PATHS["raw_mask"].format(study=study, subject=subject)
        files[subject] = entry
    return Dataset(
        name, adapter, tuple(manifest.subjects), files, pairs=manifest.pairs, raw_imports=dict(manifest.raw_imports),
        landmark_imports=dict(manifest.landmark_imports), **settings,
    )


def build_dataset(study: str, name: str, spec: Mapping[str, Any], base_dir: Path) -> Dataset:
    """The :class:`Dataset` ``datasets.<name>`` of a validated config (not for the ``truth`` adapter)."""
    if spec["adapter"] == "demo":
        dataset = _demo_dataset(study, name, spec)
    else:
        dataset = _manifest_dataset(study, name, spec, base_dir)
    _check_references(f"datasets.{name}", dataset)
    return dataset


def _check_references(where: str, dataset: Dataset) -> None:
    """Every ``affine_align`` step names one and the same subject of the dataset; InputError names the key."""
    for position, step in enumerate(dataset.preprocess):
        if step["step"] != "affine_align":
            continue
        key = f"{where}.preprocess[{position}].reference"
        _check_subjects(key, [step["reference"]], dataset)
        if step["reference"] != dataset.reference:
            raise InputError(
                f"config key {key}: '{step['reference']}' differs from the earlier reference '{dataset.reference}'; "
                "the affine_align steps of a dataset share one reference subject"
            )


def _check_subjects(where: str, names: Sequence[str], dataset: Dataset) -> None:
    known = set(dataset.subjects)
    for name in names:
        if name not in known:
            shown = ", ".join(dataset.subjects[:8]) + (", ..." if len(dataset.subjects) > 8 else "")
            raise InputError(f"config key {where}: subject '{name}' is not in dataset {dataset.name} (subjects: {shown})")


def plan_pairs(spec: Mapping[str, Any], dataset: Dataset) -> list[tuple[str, str]]:
    """(atlas, moving) pairs from the ``pairs`` config, atlas-major; InputError names the key.

    ``atlases`` x ``moving``, an explicit ``list``, or (neither given) the pairs the dataset defines.
    """
    if "list" in spec:
        pairs = [tuple(pair) for pair in spec["list"]]
        for i, (atlas, moving) in enumerate(pairs):
            _check_subjects(f"pairs.list[{i}]", (atlas, moving), dataset)
            if atlas == moving:
                raise InputError(f"config key pairs.list[{i}]: '{atlas}' is paired with itself")
        if len(set(pairs)) != len(pairs):
            raise InputError("config key pairs.list: a pair is listed twice")
        return pairs
    if "atlases" not in spec:
        if not dataset.pairs:
            raise InputError(
                f"config key pairs: dataset {dataset.name} ({dataset.adapter}) defines no pairs; "
                "give atlases and moving, or a list"
            )
        return [tuple(pair) for pair in dataset.pairs]
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


def exact_regex(names: Sequence[str]) -> str:
    """A regex matching exactly ``names`` (a wildcard constraint: subjects, grid ids); one that
    matches nothing when ``names`` is empty."""
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)) or "(?!)"


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
    """A planned study: config (validated, defaults and ANOVA factors resolved), datasets, pairs,
    grid points per method, training sets and the jobs (method x grid point x pair, in that
    nesting order).

    Subjects are unique within a study. A *prepared* subject belongs to one dataset and is
    preprocessed by a ``prepare`` job; the moving subjects of a ``truth`` dataset are made by
    ``synth_pair`` jobs from the prepared base subject instead. Optional files of a subject
    (labels, landmarks, mask) are used wherever they exist: a pair has labels / landmarks when
    both of its subjects have them.
    """

    def __init__(self, config: Mapping[str, Any], base_dir: str | Path = ".") -> None:
        """``config``: a mapping as read from YAML (validated again here); ``base_dir``: where
        relative dataset paths start. Raises InputError naming the offending key."""
        self.config = validate_config(config)
        self.name: str = self.config["study"]
        self.base_dir = Path(base_dir)
        self.datasets: dict[str, Dataset] = {}
        self._owner: dict[str, Dataset] = {}
        self.truth: Truth | None = None
        self.dataset = self._pairs_dataset()
        self.pairs = plan_pairs(self.config["pairs"], self.dataset)
        self.grid = {
            method: method_grid(method, spec, self._extra_params(method))
            for method, spec in self.config["methods"].items()
        }
        self.training = {method: self._training(method, spec) for method, spec in self.config["methods"].items()}
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
    def _use_dataset(self, name: str) -> Dataset:
        """Build dataset ``name`` once and own its subjects (unique across the study's datasets)."""
        if name not in self.datasets:
            dataset = build_dataset(self.name, name, self.config["datasets"][name], self.base_dir)
            for subject in dataset.subjects:
                other = self._owner.setdefault(subject, dataset)
                if other is not dataset:
                    raise InputError(
                        f"config key datasets.{name}: subject '{subject}' is also in dataset {other.name}; "
                        "subject ids must be unique within a study"
                    )
            self.datasets[name] = dataset
        return self.datasets[name]

    def _dataset_name(self, where: str, name: str | None) -> str:
        datasets = self.config["datasets"]
        if name is None:
            if len(datasets) != 1:
                raise InputError(f"config key {where}: required when there are several datasets ({', '.join(datasets)})")
            name = next(iter(datasets))
        if name not in datasets:
            raise InputError(f"config key {where}: '{name}' is not a dataset (datasets: {', '.join(datasets)})")
        return name

    def _pairs_dataset(self) -> Dataset:
        name = self._dataset_name("pairs.dataset", self.config["pairs"].get("dataset"))
        spec = self.config["datasets"][name]
        if spec["adapter"] == "truth":
            return self._truth_dataset(name, spec)
        return self._use_dataset(name)

    def _truth_dataset(self, name: str, spec: Mapping[str, Any]) -> Dataset:
        """The truth dataset: base subject (fixed) + one moving subject per known-truth pair."""
        where = f"datasets.{name}"
        for key in ("preprocess", "align", "make_mask"):
            if spec.get(key):
                raise InputError(f"config key {where}.{key}: a truth dataset uses the prepared base subject; set it on its base dataset")
        base_name = spec["base"]
        if base_name not in self.config["datasets"] or self.config["datasets"][base_name]["adapter"] == "truth":
            choices = [n for n, s in self.config["datasets"].items() if s["adapter"] != "truth"]
            raise InputError(f"config key {where}.base: '{base_name}' is not a dataset to deform (datasets: {', '.join(choices)})")
        base = self._use_dataset(base_name)
        _check_subjects(f"{where}.subject", [spec["subject"]], base)
        subject = spec["subject"]
        movers = tuple(f"{subject}-m{k}" for k in range(spec["n_pairs"]))
        for mover in movers:
            if mover in self._owner:
                raise InputError(f"config key {where}.n_pairs: moving subject '{mover}' is also in dataset {self._owner[mover].name}")
        settings = {key: spec[key] for key in ("motion", "max_disp_mm", "noise_std", "n_landmarks")}
        self.truth = Truth(name, base_name, subject, movers, spec["seed"], settings)
        return Dataset(
            name, "truth", (subject, *movers), {subject: base.files[subject]}, base.preprocess,
            pairs=tuple((subject, mover) for mover in movers),
        )

    def _extra_params(self, method: str) -> dict[str, Any]:
        uses_gpu = self.config["use_gpu"] and method in available_methods() and get_method(method).uses_torch
        return {"device": "cuda"} if uses_gpu else {}

    def _training(self, method: str, spec: Mapping[str, Any]) -> Training | None:
        """The training set of a learned method; None for other methods and when the params name a
        trained checkpoint."""
        where = f"methods.{method}.train"
        train = spec.get("train")
        if not get_method(method).trainable:
            if train is not None:
                learned = [m for m in available_methods() if get_method(m).trainable]
                raise InputError(f"config key {where}: {method} is not a learned method (learned: {', '.join(learned) or 'none'})")
            return None
        if train is None:
            if get_method(method).requires_checkpoint and spec["params"].get("checkpoint") is None:
                raise InputError(f"config key {where}: required for the learned method {method} (or set params.checkpoint)")
            return None
        if "checkpoint" in spec["params"] or "checkpoint" in spec["grid"]:
            raise InputError(f"config key methods.{method}.params.checkpoint: the workflow trains {method}; remove it or remove train")
        name = self._dataset_name(f"{where}.dataset", train.get("dataset"))
        if self.config["datasets"][name]["adapter"] == "truth":
            raise InputError(f"config key {where}.dataset: '{name}' is a truth dataset; train on a prepared dataset")
        dataset = self._use_dataset(name)
        tested = {s for pair in self.pairs for s in pair}
        for key in ("subjects", "val_subjects"):
            _check_subjects(f"{where}.{key}", train[key], dataset)
            shared = [s for s in train[key] if s in tested]
            if shared:
                raise InputError(f"config key {where}.{key}: '{shared[0]}' is also in the test pairs; training and test subjects must differ")
        if len(train["val_subjects"]) == 1:
            raise InputError(f"config key {where}.val_subjects: give at least 2 subjects (validation pairs) or none")
        overlap = sorted(set(train["subjects"]) & set(train["val_subjects"]))
        if overlap:
            raise InputError(f"config key {where}.val_subjects: '{overlap[0]}' is also a training subject")
        align_to = train.get("align_to")
        if align_to is not None:
            _check_subjects(f"{where}.align_to", [align_to], dataset)
            if dataset.align is None:
                raise InputError(f"config key {where}.align_to: dataset {name} has no align settings (datasets.{name}.align)")
        return Training(name, tuple(train["subjects"]), tuple(train["val_subjects"]), align_to)

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

    def owner(self, subject: str) -> Dataset:
        """The dataset that prepares ``subject`` (KeyError for a truth moving subject)."""
        return self._owner[subject]

    def prepared_subjects(self) -> list[str]:
        """Subjects with a ``prepare`` job: those of the pairs, the truth base and the training sets."""
        wanted = {s for pair in self.pairs for s in pair}
        for training in self.training.values():
            if training is not None:
                wanted.update(training.subjects + training.val_subjects)
        return [s for s in self._owner if s in wanted]

    def subject_kinds(self, subject: str) -> tuple[str, ...]:
        """Optional prepared files of a subject, among ``labels``, ``landmarks``, ``mask``."""
        if self.truth is not None and subject in self.truth.movers:
            return ("labels",) if "labels" in self.subject_kinds(self.truth.subject) else ()
        return tuple(kind for kind in ("labels", "landmarks", "mask") if kind in self._owner[subject].files[subject])

    def truth_files(self, **fields: str) -> dict[str, str]:
        """Files a ``synth-pair`` job writes (:data:`TRUTH_FILES`; moving labels and mask only
        when the base subject has them); ``moving=<id>`` fills the ``{moving}`` wildcard."""
        assert self.truth is not None
        base_kinds = self.subject_kinds(self.truth.subject)
        folder = self.path("truth_dir", **fields)
        return {
            key: f"{folder}/{name}" for key, name in TRUTH_FILES.items()
            if key not in ("moving_labels", "mask") or key.removeprefix("moving_") in base_kinds
        }

    def prepared_files(self, subject: str) -> dict[str, str]:
        """``image`` and the optional files of a subject after preprocessing (truth movers: synth-pair outputs)."""
        if self.truth is not None and subject in self.truth.movers:
            truth = self.truth_files(moving=subject)
            files = {"image": truth["moving"]}
            if "moving_labels" in truth:
                files["labels"] = truth["moving_labels"]
            return files
        return {kind: self.path(f"prep_{kind}", subject=subject) for kind in ("image", *self.subject_kinds(subject))}

    def stage_files(self, subject: str, position: int) -> dict[str, str]:
        """``image`` and optional files of a subject after its preprocessing step ``position``
        (1-based): the raw files for 0, the prepared files after the last step, else the files of
        stage ``<position>-<step>`` (results/<study>/prep/<subject>/stages/, temporary)."""
        dataset = self._owner[subject]
        if position == 0:
            return dict(dataset.files[subject])
        if position == len(dataset.preprocess):
            return self.prepared_files(subject)
        stage = f"{position}-{dataset.preprocess[position - 1]['step']}"
        return {kind: self.path(f"stage_{kind}", subject=subject, stage=stage) for kind in ("image", *self.subject_kinds(subject))}

    def step_inputs(self, subject: str, position: int) -> dict[str, str]:
        """Files the job of a subject's preprocessing step ``position`` (1-based) reads: the files of
        the stage before and, for an ``affine_align`` step, ``reference``: the image of the dataset's
        reference subject at that same stage."""
        dataset = self._owner[subject]
        files = self.stage_files(subject, position - 1)
        if dataset.preprocess[position - 1]["step"] == "affine_align":
            assert dataset.reference is not None
            files["reference"] = self.stage_files(dataset.reference, position - 1)["image"]
        return files

    def staged_subjects(self) -> list[str]:
        """Subjects with preprocessing jobs: the prepared ones and the ``affine_align`` references of their datasets."""
        prepared = self.prepared_subjects()
        references = {self._owner[s].reference for s in prepared} - {None}
        return [s for s in self._owner if s in prepared or s in references]

    def pair_kinds(self, atlas: str, moving: str) -> tuple[str, ...]:
        """``labels`` / ``landmarks`` when both subjects of the pair have them (truth pairs always have landmarks)."""
        if self.truth is not None and moving in self.truth.movers:
            return (*self.subject_kinds(moving), "landmarks")
        atlas_kinds = self.subject_kinds(atlas)
        return tuple(kind for kind in ("labels", "landmarks") if kind in atlas_kinds and kind in self.subject_kinds(moving))

    def aligned(self, atlas: str, moving: str) -> bool:
        """Whether the pair's moving image is pre-aligned to the atlas (its dataset's ``align``)."""
        return moving in self._owner and self._owner[moving].align is not None

    def align_outputs(self, atlas: str, moving: str, kinds: Sequence[str]) -> dict[str, str]:
        """The moving image (and labels / landmarks among ``kinds``) pre-aligned to the atlas grid."""
        return {
            kind: self.path(f"aligned_{kind}", atlas=atlas, moving=moving)
            for kind in ("image", *kinds) if kind in ("image", "labels", "landmarks")
        }

    def pair_files(self, atlas: str, moving: str) -> dict[str, str]:
        """Files of one registration pair, keyed like the command-line options they go to:
        ``fixed``, ``moving`` and, when the pair has them, ``fixed_labels``, ``moving_labels``,
        ``fixed_landmarks``, ``moving_landmarks``; ``mask`` (the atlas's mask) and
        ``truth_displacement`` (known-truth pairs). The moving files are the pre-aligned ones
        when the dataset sets ``align``."""
        kinds = self.pair_kinds(atlas, moving)
        fixed, moving_files = self.prepared_files(atlas), self.prepared_files(moving)
        if self.aligned(atlas, moving):
            moving_files = self.align_outputs(atlas, moving, kinds)
        files = {"fixed": fixed["image"], "moving": moving_files["image"]}
        if "labels" in kinds:
            files.update(fixed_labels=fixed["labels"], moving_labels=moving_files["labels"])
        if self.truth is not None and moving in self.truth.movers:
            truth = self.truth_files(moving=moving)
            files.update({key: truth[key] for key in ("fixed_landmarks", "moving_landmarks", "truth_displacement")})
        elif "landmarks" in kinds:
            files.update(fixed_landmarks=fixed["landmarks"], moving_landmarks=moving_files["landmarks"])
        if "mask" in fixed:
            files["mask"] = fixed["mask"]
        return files

    def aligned_pairs(self) -> list[tuple[str, str]]:
        """(atlas, moving) of every pre-alignment: registered pairs of a dataset with ``align``, and
        (``align_to``, subject) for the training images of a learned method."""
        pairs = [pair for pair in self.pairs if self.aligned(*pair)]
        for training in self.training.values():
            if training is not None and training.align_to is not None:
                pairs += [(training.align_to, s) for s in training.subjects + training.val_subjects]
        return list(dict.fromkeys(pairs))

    def variants(self, items: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Distinct kind sets of ``items``, largest first (rule variants and their order)."""
        return sorted(set(items), key=lambda kinds: (-len(kinds), kinds))

    def train_id(self, method: str, grid_id_: str) -> str:
        """The model a grid point of a learned method registers with: the grid id over its keys
        that are not :data:`REGISTER_ONLY_PARAMS` (``default`` when none is left)."""
        values = self.grid_point(method, grid_id_).values
        return grid_id({key: value for key, value in values.items() if key not in REGISTER_ONLY_PARAMS})

    def register_params(self, method: str, grid_id_: str) -> dict[str, Any]:
        """Parameters of a registration job: the grid point's, plus the trained ``checkpoint``."""
        params = dict(self.grid_point(method, grid_id_).params)
        if self.training.get(method) is not None:
            params["checkpoint"] = self.path("model", method=method, grid_id=self.train_id(method, grid_id_))
        return params

    def trained_models(self) -> list[tuple[str, str]]:
        """(method, train id) of every model a ``train`` job makes, in grid order."""
        models = [
            (method, self.train_id(method, point.grid_id))
            for method, points in self.grid.items() if self.training.get(method) for point in points
        ]
        return list(dict.fromkeys(models))

    def train_params(self, method: str, train_id: str) -> dict[str, Any]:
        """Parameters of the training job of model ``train_id``: its grid points' params without
        :data:`REGISTER_ONLY_PARAMS`."""
        point = next(p for p in self.grid[method] if self.train_id(method, p.grid_id) == train_id)
        return {key: value for key, value in point.params.items() if key not in REGISTER_ONLY_PARAMS}

    def train_files(self, method: str) -> dict[str, list[str]]:
        """``images`` (and ``labels`` when every training and validation image has them),
        ``val_images`` (and ``val_labels``): prepared, or pre-aligned to ``align_to``."""
        training = self.training[method]
        assert training is not None
        groups = {prefix: subjects for prefix, subjects in (("", training.subjects), ("val_", training.val_subjects)) if subjects}
        if training.align_to is None:
            found = {prefix: [self.prepared_files(s) for s in subjects] for prefix, subjects in groups.items()}
        else:
            found = {
                prefix: [self.align_outputs(training.align_to, s, self.pair_kinds(training.align_to, s)) for s in subjects]
                for prefix, subjects in groups.items()
            }
        labelled = all("labels" in f for group in found.values() for f in group)
        files: dict[str, list[str]] = {}
        for prefix, group in found.items():
            files[f"{prefix}images"] = [f["image"] for f in group]
            if labelled:
                files[f"{prefix}labels"] = [f["labels"] for f in group]
        return files

    def register_resources(
        self, method: str, grid_id_: str | None = None, shape: Sequence[int] | None = None, attempt: int = 1
    ) -> dict[str, int]:
        """threads, mem_mb, runtime (minutes), gpu (0 or 1) and cpus_per_gpu of ``method``'s
        registration jobs. With the grid point and the fixed image's ``shape``, memory and time are
        estimated by :func:`registration_core.resources.register_resources` (the config's values
        are floors; ``attempt`` > 1 asks for more); without them, the config's values."""
        base = {**self.config["resources"]["register"], **self.config["methods"][method].get("resources", {})}
        use_gpu = bool(self._extra_params(method))
        if grid_id_ is None or shape is None:
            return {**base, "gpu": int(use_gpu), "cpus_per_gpu": base["threads"] if use_gpu else 0}
        params = self.register_params(method, grid_id_)
        return estimate_register_resources(method, params, shape, base, use_gpu, attempt)

    def train_resources(self, method: str) -> dict[str, int]:
        """threads, mem_mb, runtime (minutes) and gpu (0 or 1) of ``method``'s training jobs."""
        return {**self.config["resources"]["train"], "gpu": int(bool(self._extra_params(method)))}

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

    def _step_jobs(self, subject: str, prepared: bool) -> int:
        """Preprocessing step jobs of a subject: all its steps when it is prepared, else (a reference
        subject only) the steps before its dataset's last ``affine_align`` step."""
        steps = [step["step"] for step in self._owner[subject].preprocess]
        return len(steps) if prepared else len(steps) - 1 - steps[::-1].index("affine_align")

    def jobs_by_rule(self) -> dict[str, int]:
        """Number of jobs of each per-item rule family (for the parse-time summary)."""
        prepared = self.prepared_subjects()
        owners = [self._owner[s] for s in prepared]
        counts = {
            "demo_subject": sum(d.adapter == "demo" for d in owners),
            "import_raw": sum(s in d.raw_imports for s, d in zip(prepared, owners)),
            "import_landmarks": sum(s in d.landmark_imports for s, d in zip(prepared, owners)),
            "lung_mask": sum(d.mask is not None for d in owners),
            "prepare": sum(not d.preprocess for d in owners),
            "preprocess": sum(self._step_jobs(s, s in prepared) for s in self.staged_subjects()),
            "qc": len(prepared),
            "synth_pair": len(self.truth.movers) if self.truth else 0,
            "align": len(self.aligned_pairs()),
            "train": len(self.trained_models()),
            "register": len(self.jobs),
            "evaluate": len(self.jobs),
        }
        return {rule: count for rule, count in counts.items() if count or rule in ("register", "evaluate")}

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
