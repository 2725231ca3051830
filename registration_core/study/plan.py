"""Study planning: a config file -> validated config -> subjects, pairs, grid points and jobs.

A *study* registers moving images onto atlases (fixed = atlas, moving = the image deformed onto
it) with every method at every point of its hyperparameter grid. One *job* is one
method x grid point x (atlas, moving) pair. This module holds no image code and no Snakemake: the
workflow (``workflow/rules/common.smk``) builds one :class:`Study` at parse time and reads every
file name, parameter and job list from it, and ``python -m registration_core plan`` writes the same
jobs table. Relative dataset paths are relative to ``base_dir`` (the run's working directory).

Datasets are read by the adapters of :mod:`registration_core.data.adapters` (their manifest) or made
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

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registration_core.core.io import atomic_path
from registration_core.data.adapters import ADAPTER_KEYS, build_manifest
from registration_core.data.imports import LandmarkImport, RawImport
from registration_core.errors import InputError
from registration_core.layout import PATHS
from registration_core.methods import available_methods, get_method
from registration_core.preprocessing.align import check_align_settings
from registration_core.preprocessing.steps import validate_steps
from registration_core.study.checks import missing_inputs, pair_inputs, plan_problems
from registration_core.study.config import ID_PATTERN, load_config, validate_config
from registration_core.study.files import StudyFiles
from registration_core.study.grid import format_value, method_grid, value_text
from registration_core.study.jobs import JOB_COLUMNS, Job, StudyJobs

DEMO_PREFIX = "demo-"
"""Demo subjects are ``demo-00``, ``demo-01``, ...; subject ``demo-00`` is the undeformed template."""


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
    ``align`` the settings of :func:`registration_core.preprocessing.align.align_to_fixed` (None: no
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


STUDY_DATASET_KEYS = ("adapter", "preprocess", "align", "make_mask")
"""Dataset keys the study reads for every adapter; the adapter reads the others."""


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
    demo = {key: spec[key] for key in ADAPTER_KEYS["demo"]}
    return Dataset(name, "demo", subjects, files, demo=demo, **_study_settings(f"datasets.{name}", spec))


def _manifest_dataset(study: str, name: str, spec: Mapping[str, Any], base_dir: Path) -> Dataset:
    """A dataset read by an adapter of :mod:`registration_core.data.adapters` (folder, dirlab, ...)."""
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


class Study(StudyFiles, StudyJobs):
    """A planned study: config (validated, defaults and ANOVA factors resolved), datasets, pairs,
    grid points per method, training sets and the jobs (method x grid point x pair, in that
    nesting order).

    Subjects are unique within a study. A *prepared* subject belongs to one dataset and is
    preprocessed by a ``prepare`` job; the moving subjects of a ``truth`` dataset are made by
    ``synth_pair`` jobs from the prepared base subject instead. Optional files of a subject
    (labels, landmarks, mask) are used wherever they exist: a pair has labels / landmarks when
    both of its subjects have them.
    """

    def __init__(self, config: Mapping[str, Any], base_dir: str | Path = ".", check_files: bool = True) -> None:
        """``config``: a mapping as read from YAML (validated again here); ``base_dir``: where
        relative dataset paths start; ``check_files``: run the plan-time checks that read image
        headers and label maps (:func:`registration_core.study.checks.plan_problems`; a job's own
        Snakemake process, which plans the study again, skips them). Raises InputError naming the
        offending key, one line per problem."""
        responses_given = isinstance(config.get("anova"), Mapping) and "responses" in config["anova"]
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
        if not responses_given:  # the default responses: those the pairs can give (no Dice without labels)
            kinds = pair_inputs(self)
            responses = [r for r in self.config["anova"]["responses"] if not missing_inputs(r, kinds)]
            self.config["anova"]["responses"] = responses or self.config["anova"]["responses"]
        self.jobs = [
            Job(self.name, self.dataset.name, point.method, point.grid_id, atlas, moving)
            for points in self.grid.values()
            for point in points
            for atlas, moving in self.pairs
        ]
        self._check_size()
        problems = plan_problems(self, check_files)
        if problems:
            raise InputError("\n".join(problems))

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
