"""What the Snakemake rules ask of a planned study: each rule's input files, command-line arguments,
tracked settings, rule variants and resources, as plain functions of the study and the job's
wildcards. The ``.smk`` files only wire these to rules, so every decision here is testable
without running Snakemake.

``wildcards`` is any object with the rule's wildcards as attributes (Snakemake's ``Wildcards``);
``input`` / ``output`` any mapping-like object with ``items()`` (Snakemake's ``InputFiles`` /
``OutputFiles``, or a dict). Command-line flags come from :data:`registration_core.cli.FILE_OPTIONS`,
the file names from :mod:`registration_core.layout`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from registration_core.cli import file_args
from registration_core.failures import job_id
from registration_core.layout import benchmark_path, reg_file
from registration_core.study.grid import value_text
from registration_core.study.plan import Study, exact_regex

PAIR_JOB = "{method}/{grid_id}/{atlas}__{moving}"
"""How the logs and benchmarks of the per-job rules name a job (Snakemake wildcards)."""


def quoted(args: Iterable[Any]) -> str:
    """One shell-quoted string of command-line arguments."""
    return " ".join(shlex.quote(str(arg)) for arg in args)


def files_of(files: Any) -> dict[str, Any]:
    """A plain dict of a Snakemake input/output object (or a mapping)."""
    return dict(files.items())


def set_args(settings: Mapping[str, Any]) -> list[str]:
    """``--set key=value`` arguments of a ``preprocess`` step (values as JSON, which the command reads as YAML)."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def param_args(params: Mapping[str, Any]) -> list[str]:
    """``--param key=value`` arguments."""
    return [arg for key, value in params.items() for arg in ("--param", f"{key}={value_text(value)}")]


def tracked(value: Any) -> str:
    """A job setting as JSON text, for a ``params`` entry of wildcards only. Snakemake reruns a job
    when such an entry changes; entries computed from ``input``/``output`` (the command-line
    arguments) are not compared, so every rule whose command depends on config settings also
    lists them through this."""
    return json.dumps(value, sort_keys=True, default=str)


def variant_name(base: str, kinds: Sequence[str], variants: Sequence[Sequence[str]]) -> str:
    """Name of one variant of a family of rules that differ in optional outputs: ``base`` when the
    study needs one variant, else ``base_with_<kinds>`` (``base_plain`` without optional files)."""
    if len(variants) == 1:
        return base
    return f"{base}_with_{'_'.join(kinds)}" if kinds else f"{base}_plain"


class SubjectRules:
    """Per-subject rules: dataset files, preprocessing steps, ``prepare``, QC, pre-alignment and
    the known-truth pairs."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.prepared = study.prepared_subjects()
        self.staged = study.staged_subjects()
        self.aligned_pairs = study.aligned_pairs()
        self.prepare_variants = study.variants(
            [study.subject_kinds(s) for s in self.prepared if not study.owner(s).preprocess]
        )
        self.align_variants = study.variants([study.pair_kinds(*pair) for pair in self.aligned_pairs])
        self.group = None if any(study.owner(s).reference for s in self.staged) else "prep"
        """SLURM batch of the per-subject jobs. None (one SLURM job each) when a dataset has an
        affine_align step: its jobs join every subject to the reference subject."""

    def where(self, condition: Any) -> str:
        """Regex of the prepared subjects for which ``condition(subject, dataset)`` holds."""
        return exact_regex([s for s in self.prepared if condition(s, self.study.owner(s))])

    def raw_inputs(self, wildcards: Any) -> dict[str, str]:
        """A subject's dataset files: image and, when it has them, labels, landmarks and mask."""
        return self.study.stage_files(wildcards.subject, 0)

    def prepare_subjects(self, kinds: tuple[str, ...]) -> list[str]:
        """Subjects without steps whose optional files are ``kinds`` (one ``prepare`` variant)."""
        study = self.study
        return [s for s in self.prepared if not study.owner(s).preprocess and study.subject_kinds(s) == kinds]

    def prepare_args(self, wildcards: Any, input: Any, output: Any) -> str:
        """Inputs and outputs of the ``prepare`` job of a subject without preprocessing steps."""
        return quoted(self.subject_args(input, output, "--out-image") + ["--steps", "[]"])

    @staticmethod
    def subject_args(input: Any, output: Any, out_image: str = "--out") -> list[str]:
        """Input and output options of a ``prepare`` / ``preprocess`` job on one subject's files."""
        outputs = files_of(output)
        return file_args("subject", files_of(input)) + [out_image, outputs["image"]] + file_args("subject_outputs", outputs)

    def step_position(self, wildcards: Any) -> int:
        """1-based position of the step a preprocessing job runs: the ``position`` wildcard of a
        stage, or the last step for the job that writes the prepared files."""
        position = getattr(wildcards, "position", None)
        return len(self.study.owner(wildcards.subject).preprocess) if position is None else int(position)

    def step_settings(self, wildcards: Any) -> dict[str, Any]:
        """Settings of the step a job runs (without ``step`` and ``reference``, a --reference file)."""
        step = self.study.owner(wildcards.subject).preprocess[self.step_position(wildcards) - 1]
        return {key: value for key, value in step.items() if key not in ("step", "reference")}

    def step_inputs(self, wildcards: Any) -> dict[str, str]:
        """The subject's files before the step and, for ``affine_align``, the reference image."""
        return self.study.step_inputs(wildcards.subject, self.step_position(wildcards))

    def step_args(self, wildcards: Any, input: Any, output: Any) -> str:
        """Inputs, outputs and ``--set`` settings of a preprocessing step job."""
        return quoted(self.subject_args(input, output) + set_args(self.step_settings(wildcards)))

    def step_rules(self) -> dict[tuple[str, tuple[str, ...], bool], list[str]]:
        """The step rules the study needs: {(step, kinds, last): subjects}; ``kinds`` are the
        subjects' optional files, ``last`` says the rule writes the prepared files."""
        rules: dict[tuple[str, tuple[str, ...], bool], list[str]] = {}
        for subject in self.staged:
            steps = self.study.owner(subject).preprocess
            for position, step in enumerate(steps, 1):
                key = (step["step"], self.study.subject_kinds(subject), position == len(steps))
                rules.setdefault(key, []).append(subject)
        return rules

    def step_rule_name(self, step: str, kinds: tuple[str, ...], last: bool) -> str:
        """``<step>`` (a stage) or ``<step>_final`` (writes the prepared files), with a
        ``_with_<kinds>`` suffix when the study has subjects with different optional files."""
        base = f"{step}_final" if last else step
        variants = self.study.variants([k for (name, k, final) in self.step_rules() if (name, final) == (step, last)])
        return variant_name(base, kinds, variants)

    def step_outputs(self, step: str, kinds: tuple[str, ...], last: bool) -> dict[str, str]:
        """Outputs of a step rule: the prepared files, or the files of stage ``<position>-<step>``
        (the rule marks those temporary)."""
        if last:
            return {kind: self.study.path(f"prep_{kind}") for kind in ("image", *kinds)}
        return {kind: self.study.path(f"stage_{kind}", stage=f"{{position}}-{step}") for kind in ("image", *kinds)}

    def qc_inputs(self, wildcards: Any) -> dict[str, str]:
        """Raw image (and labels) of a subject, its prepared image (and labels, mask)."""
        raw = self.raw_inputs(wildcards)
        prepared = self.study.prepared_files(wildcards.subject)
        files = {"raw_image": raw["image"], **{k: v for k, v in prepared.items() if k != "landmarks"}}
        if "labels" in raw:
            files["raw_labels"] = raw["labels"]
        return files

    def qc_args(self, wildcards: Any, input: Any) -> str:
        """Input options of a ``qc`` job."""
        return quoted(file_args("qc", files_of(input)))

    def align_subjects(self, kinds: tuple[str, ...]) -> list[str]:
        """Subjects of the pre-aligned pairs that have the optional files ``kinds``."""
        return [s for pair in self.aligned_pairs for s in pair if set(kinds) <= set(self.study.subject_kinds(s))]

    def align_inputs(self, wildcards: Any) -> dict[str, str]:
        """The atlas image (``reference``) and the prepared moving image, with the moving labels /
        landmarks the pair uses."""
        kinds = self.study.pair_kinds(wildcards.atlas, wildcards.moving)
        moving = self.study.prepared_files(wildcards.moving)
        files = {"reference": self.study.prepared_files(wildcards.atlas)["image"], "image": moving["image"]}
        files.update({kind: moving[kind] for kind in kinds})
        return files

    def align_args(self, wildcards: Any, input: Any, output: Any) -> str:
        """Inputs, outputs and settings of an ``affine-align`` job."""
        return quoted(self.subject_args(input, output) + set_args(self.study.owner(wildcards.moving).align))

    def truth_inputs(self, wildcards: Any) -> dict[str, str]:
        """The prepared base subject of the known-truth pairs: image, and labels / mask when it has them."""
        assert self.study.truth is not None
        files = self.study.prepared_files(self.study.truth.subject)
        return {key: path for key, path in files.items() if key != "landmarks"}

    def truth_args(self, wildcards: Any, input: Any) -> str:
        """Inputs and settings of a ``synth-pair`` job."""
        assert self.study.truth is not None
        inputs = file_args("subject", {k: v for k, v in files_of(input).items() if k in ("image", "labels", "mask")})
        return quoted(inputs + self.study.truth.cli_args(wildcards.moving))


class PairRules:
    """Per-pair and study-level rules: training, registration, evaluation, tables, report."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.trained = study.trained_models()
        self.register_variants: list[tuple[str, ...]] = [()]
        """One registration rule: its output is the registration folder, whatever files the pair
        gives it (warped labels or not), or the failure record."""
        self.anova = study.config["anova"]
        self.run_anova = bool(self.anova["factors"])

    def train_args(self, wildcards: Any, input: Any) -> str:
        """Image options and ``--param`` arguments of a training job."""
        params = self.study.train_params(wildcards.method, wildcards.grid_id)
        return quoted(file_args("train", files_of(input)) + param_args(params))

    def register_inputs(self, wildcards: Any) -> dict[str, str]:
        """Fixed = the atlas, moving = the image deformed onto it (pre-aligned when the dataset says
        so), their labels and landmarks when the pair has them, the trained model of a learned method."""
        files = {
            key: path for key, path in self.study.pair_files(wildcards.atlas, wildcards.moving).items()
            if key not in ("mask", "truth_displacement")
        }
        if self.study.training.get(wildcards.method) is not None:
            files["checkpoint"] = self.study.register_params(wildcards.method, wildcards.grid_id)["checkpoint"]
        return files

    def job_log(self, rule: str) -> str:
        """Log file pattern of the per-job rules (``register``, ``evaluate``; Snakemake wildcards)."""
        return f"{self.study.path('logs')}/{rule}/{PAIR_JOB}.log"

    def job_benchmark(self, rule: str) -> str:
        """``benchmark:`` file pattern of the per-job rules (layout :func:`benchmark_path`)."""
        return benchmark_path(self.study.path("benchmarks"), rule, PAIR_JOB)

    def failure_args(self, rule: str, wildcards: Any) -> list[str]:
        """Arguments that make an input error of a ``register`` / ``evaluate`` job its recorded
        result (registration_core.failures): the job's id and log file."""
        job = {name: getattr(wildcards, name) for name in ("method", "grid_id", "atlas", "moving")}
        return ["--record-failures", "--job-id", job_id(job), "--job-log", self.job_log(rule).format(**job)]

    def register_args(self, wildcards: Any, input: Any) -> str:
        """Input options, ``--param`` arguments (grid point + checkpoint) and the failure record of a
        registration job."""
        params = self.study.register_params(wildcards.method, wildcards.grid_id)
        return quoted(file_args("register", files_of(input)) + param_args(params) + self.failure_args("register", wildcards))

    def evaluate_inputs(self, wildcards: Any) -> dict[str, str]:
        """The pair's files (fixed, moving, labels, landmarks, mask, true displacement) and the
        registration folder (``registration``: its results or its failure record)."""
        files = self.study.pair_files(wildcards.atlas, wildcards.moving)
        files["registration"] = self.study.path(
            "reg_dir", method=wildcards.method, grid_id=wildcards.grid_id, atlas=wildcards.atlas, moving=wildcards.moving
        )
        return files

    def evaluate_args(self, wildcards: Any, input: Any) -> str:
        """``evaluate`` options for the files the pair has and the registration's warped image,
        warped labels and displacement (names from the layout), the label selection when the pair
        has labels, and the failure record."""
        inputs = files_of(input)
        reg_dir = inputs.pop("registration")
        keys = ("warped", "displacement", *(["warped_labels"] if "fixed_labels" in inputs else []))
        inputs.update({key: str(reg_file(reg_dir, key)) for key in keys})
        labels = self.study.evaluate_label_args() if "fixed_labels" in inputs else []
        return quoted(file_args("evaluate", inputs) + labels + self.failure_args("evaluate", wildcards))

    def resources_of(self, rule_name: str) -> dict[str, int]:
        """mem_mb and runtime (minutes) of a rule from the config's `resources` section."""
        return {key: value for key, value in self.study.config["resources"][rule_name].items() if key != "threads"}

    def threads_of(self, rule_name: str) -> int:
        """Threads of a rule from the config's `resources` section."""
        return self.study.config["resources"][rule_name]["threads"]

    def report_inputs(self, wildcards: Any) -> dict[str, Any]:
        """Everything the HTML report reads: config, tables, ANOVA results, the QC figures of every
        prepared subject, training logs of learned methods."""
        study = self.study
        inputs: dict[str, Any] = {
            "config": study.path("config"), "jobs": study.path("jobs"), "metrics": study.path("metrics_table"),
            "dice": study.path("dice_table"), "summary": study.path("summary_table"), "loss": study.path("loss_table"),
            "failures": study.path("failures_table"),
        }
        if self.run_anova:
            inputs["anova"] = study.path("anova_dir")
        inputs["qc"] = [study.path("qc", subject=subject) for subject in study.prepared_subjects()]
        inputs["training"] = [study.path("train_log", method=m, grid_id=train_id) for m, train_id in self.trained]
        return inputs


SUBJECT_KINDS = ("labels", "landmarks", "mask")
"""Optional files of a subject, in the order rule-variant names list them."""
PAIR_KINDS = ("labels", "landmarks")
"""Optional files of a pre-aligned pair."""
FIXED_RULES = {
    "all": "the study's final targets (tables, statistics, report)",
    "demo_subject": "one subject of the embedded demo dataset",
    "import_raw": "a raw volume or picture converted to NIfTI",
    "import_landmarks": "a dataset's point file converted to the landmark CSV",
    "make_mask": "the lung mask of a subject's raw CT (a dataset's `make_mask`)",
    "synth_pair": "a known-truth pair deformed from the base subject",
    "qc": "the before/after preprocessing figure of a subject",
    "train": "one model of a learned method (one per grid point without the registration-only keys)",
    "evaluate": "the metrics of one registration",
    "resolved_config": "the config with defaults filled in",
    "plan": "the jobs table",
    "aggregate": "the study tables",
    "anova": "the statistics of the grid",
    "report": "the HTML report",
}


def _kind_variants(base: str, kinds: Sequence[str]) -> list[str]:
    """``base`` and every name :func:`variant_name` can give it over subsets of ``kinds``."""
    subsets = [tuple(k for j, k in enumerate(kinds) if mask >> j & 1) for mask in range(1, 2 ** len(kinds))]
    return [base, f"{base}_plain", *(f"{base}_with_{'_'.join(subset)}" for subset in subsets)]


def rule_names(steps: Sequence[str]) -> dict[str, str]:
    """Every rule name the workflow can give a job, with what the rule does: the fixed rules, and
    the variants of the rules whose optional outputs differ between subjects or pairs (a
    preprocessing step ``<step>`` for intermediate stages and ``<step>_final`` for the last step,
    ``prepare``, ``align``, ``register``; see :func:`variant_name`). ``steps``: the names of the
    preprocessing steps (their registry). ValueError when two rules would share a name (Snakemake
    refuses a workflow that defines a name twice)."""
    families = list(FIXED_RULES.items())
    for step in steps:
        families += [(name, f"preprocessing step {step} of a subject, an intermediate stage")
                     for name in _kind_variants(step, SUBJECT_KINDS)]
        families += [(name, f"preprocessing step {step} of a subject, the last step (writes prep/<subject>/)")
                     for name in _kind_variants(f"{step}_final", SUBJECT_KINDS)]
    families += [(name, "checks and copies a subject without preprocessing steps")
                 for name in _kind_variants("prepare", SUBJECT_KINDS)]
    families += [(name, "pre-aligns a moving image (labels, landmarks) onto its atlas (`align`)")
                 for name in _kind_variants("align", PAIR_KINDS)]
    families += [(name, "one registration: method x grid point x (atlas, moving) pair")
                 for name in _kind_variants("register", ("labels",))]
    names: dict[str, str] = {}
    for name, text in families:
        if name in names:
            raise ValueError(f"rule name {name!r} would name two rules: {names[name]!r} and {text!r}")
        names[name] = text
    return names


def rule_names_markdown() -> str:
    """docs/rules.md: the table of :func:`rule_names` over the registry's steps."""
    from registration_core.preprocessing.steps import STEPS

    rows = "\n".join(f"| `{name}` | {what} |" for name, what in sorted(rule_names(list(STEPS)).items()))
    return (
        "# Rule names\n\nGenerated by `make docs` (`python -m registration_core.study.rules`). Every job "
        "Snakemake runs or logs belongs to one of these rules; rules whose optional files differ between "
        "subjects come in variants (`_with_<files>`, `_plain` without optional files) when a study needs "
        "more than one.\n\n| rule | what it does |\n|---|---|\n" + rows + "\n"
    )


if __name__ == "__main__":
    print(rule_names_markdown(), end="")
