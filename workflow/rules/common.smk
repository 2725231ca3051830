# Shared setup: the study is planned once, at parse time, by registration_core.study.plan; every
# file name, parameter, resource and job list of the rules below is read from it.

import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from registration_core.errors import InputError
from registration_core.study.resources import image_shape
from registration_core.study.config import ID_PATTERN, write_config
from registration_core.study.grid import GRID_ID_PATTERN, value_text
from registration_core.study.plan import Study, demo_subject_index, exact_regex


# The rules call `python -m registration_core`: the interpreter running Snakemake (its virtual
# environment) comes first on PATH, unless a job's conda environment (--sdm conda) is activated.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))

try:
    STUDY = Study(config)
except InputError as error:
    config_files = ", ".join(map(str, workflow.overwrite_configfiles or workflow.configfiles)) or "--config"
    raise WorkflowError(f"invalid study config ({config_files}): {error}") from None

LOGS = STUDY.path("logs")
REG_DIR = STUDY.path("reg_dir")
ENV = "../../envs/registration.yaml"

logger.info(STUDY.describe())


wildcard_constraints:
    subject=ID_PATTERN,
    atlas=ID_PATTERN,
    moving=ID_PATTERN,
    method=ID_PATTERN,
    grid_id=GRID_ID_PATTERN,


def quoted(args):
    """One shell-quoted string of command-line arguments."""
    return " ".join(shlex.quote(str(arg)) for arg in args)


def variant_name(base, kinds, variants):
    """Name of one variant of a family of rules that differ in optional outputs: ``base`` when the
    study needs one variant, else ``base_with_<kinds>`` (``base_plain`` without optional files)."""
    if len(variants) == 1:
        return base
    return f"{base}_with_{'_'.join(kinds)}" if kinds else f"{base}_plain"


def option_args(files, options):
    """``--option path`` for every key of ``options`` present in ``files`` (a dict or a Snakemake
    input/output object), in the order of ``options``."""
    files = dict(files.items())
    args = []
    for key, option in options.items():
        if key in files:
            value = files[key]
            args += [option, *value] if isinstance(value, list) else [option, value]
    return args


def set_args(settings):
    """``--set key=value`` arguments of a ``preprocess`` step (values as JSON, which the command reads as YAML)."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def param_args(params):
    """``--param key=value`` arguments."""
    return [arg for key, value in params.items() for arg in ("--param", f"{key}={value_text(value)}")]


def raw_inputs(wildcards):
    """A subject's dataset files: image and, when it has them, labels, landmarks and mask (files of
    the dataset, or files an earlier rule makes under results/<study>/data)."""
    return STUDY.stage_files(wildcards.subject, 0)


def prep_files(subject):
    """Prepared image and optional files of a subject (truth moving subjects: synth-pair outputs)."""
    return STUDY.prepared_files(subject)


def register_inputs(wildcards):
    """Fixed = the atlas, moving = the image deformed onto it (pre-aligned when the dataset says
    so), their labels and landmarks when the pair has them, the trained model of a learned method."""
    files = {
        key: path for key, path in STUDY.pair_files(wildcards.atlas, wildcards.moving).items()
        if key not in ("mask", "truth_displacement")
    }
    if STUDY.training.get(wildcards.method) is not None:
        files["checkpoint"] = STUDY.register_params(wildcards.method, wildcards.grid_id)["checkpoint"]
    return files


REGISTER_OPTIONS = {
    "fixed": "--fixed", "moving": "--moving", "fixed_labels": "--fixed-labels", "moving_labels": "--moving-labels",
    "fixed_landmarks": "--fixed-landmarks", "moving_landmarks": "--moving-landmarks",
}


def register_args(wildcards, input):
    """Input options and ``--param key=value`` arguments of a registration job (grid point +
    checkpoint of a learned method)."""
    return quoted(
        option_args(input, REGISTER_OPTIONS) + param_args(STUDY.register_params(wildcards.method, wildcards.grid_id))
    )


def register_resource(name):
    """Resource function for one resource of a method's registration jobs. Memory and time are
    estimated from the fixed image's shape (its header, read when the job is about to run: Snakemake
    defers resource functions that take ``input``) and grow with ``attempt`` on retries."""
    if name in ("mem_mb", "runtime"):
        return lambda wildcards, input, attempt: STUDY.register_resources(
            wildcards.method, wildcards.grid_id, image_shape(input.fixed), attempt
        )[name]
    return lambda wildcards: STUDY.register_resources(wildcards.method)[name]


def train_resource(name):
    """Input function for one resource (threads, mem_mb, runtime, gpu) of a method's training jobs."""
    return lambda wildcards: STUDY.train_resources(wildcards.method)[name]


def evaluate_inputs(wildcards):
    """The pair's files (fixed, moving, labels, landmarks, mask, true displacement) and the
    registration's warped image, warped labels and displacement field."""
    reg_dir = STUDY.path(
        "reg_dir", method=wildcards.method, grid_id=wildcards.grid_id, atlas=wildcards.atlas, moving=wildcards.moving
    )
    files = STUDY.pair_files(wildcards.atlas, wildcards.moving)
    files.update(warped=f"{reg_dir}/warped.nii.gz", displacement=f"{reg_dir}/displacement.nii.gz")
    if "fixed_labels" in files:
        files["warped_labels"] = f"{reg_dir}/warped_labels.nii.gz"
    return files


EVALUATE_OPTIONS = {
    "fixed": "--fixed-image", "moving": "--moving-image", "warped": "--warped-image",
    "displacement": "--displacement", "fixed_labels": "--fixed-labels", "warped_labels": "--warped-labels",
    "moving_labels": "--moving-labels", "fixed_landmarks": "--fixed-landmarks",
    "moving_landmarks": "--moving-landmarks", "mask": "--mask", "truth_displacement": "--truth-displacement",
}


def tracked(value):
    """A job setting as JSON text, for a ``params`` entry of wildcards only. Snakemake reruns a job
    when such an entry changes; entries computed from ``input``/``output`` (the command-line
    arguments) are not compared, so every rule whose command depends on config settings also
    lists them through this."""
    return json.dumps(value, sort_keys=True, default=str)


def evaluate_args(wildcards, input):
    """``evaluate`` options for the files the pair has, plus the label selection when it has labels."""
    labels = STUDY.evaluate_label_args() if "fixed_labels" in input.keys() else []
    return quoted(option_args(input, EVALUATE_OPTIONS) + labels)


# ---- per-subject and per-pair data rules (data.smk, preprocess.smk, register.smk)

PREPARED = STUDY.prepared_subjects()


def prepared_where(condition):
    """Regex of the prepared subjects for which ``condition(subject, dataset)`` holds."""
    return exact_regex([s for s in PREPARED if condition(s, STUDY.owner(s))])


def truth_inputs(wildcards):
    """The prepared base subject of the known-truth pairs: image, and labels / mask when it has them."""
    return {key: path for key, path in prep_files(STUDY.truth.subject).items() if key != "landmarks"}


TRUTH_OPTIONS = {"image": "--image", "labels": "--labels", "mask": "--mask"}
SUBJECT_OPTIONS = {
    "image": "--image", "labels": "--labels", "landmarks": "--landmarks", "mask": "--mask", "reference": "--reference",
}
SUBJECT_OUTPUTS = {"labels": "--out-labels", "landmarks": "--out-landmarks", "mask": "--out-mask"}


def subject_args(input, output, out_image="--out"):
    """Input and output options of a ``prepare`` / ``preprocess`` job on one subject's files."""
    return option_args(input, SUBJECT_OPTIONS) + [out_image, output.image] + option_args(output, SUBJECT_OUTPUTS)


def prepare_args(wildcards, input, output):
    """Inputs and outputs of the ``prepare`` job of a subject without preprocessing steps."""
    return quoted(subject_args(input, output, "--out-image") + ["--steps", "[]"])


PREPARE_VARIANTS = STUDY.variants([STUDY.subject_kinds(s) for s in PREPARED if not STUDY.owner(s).preprocess])
STAGED = STUDY.staged_subjects()


def step_position(wildcards):
    """1-based position of the step a preprocessing job runs: the ``position`` wildcard of a
    stage, or the last step for the job that writes the prepared files."""
    position = getattr(wildcards, "position", None)
    return len(STUDY.owner(wildcards.subject).preprocess) if position is None else int(position)


def step_settings(wildcards):
    """Settings of the step a preprocessing job runs (without ``step``, and without ``reference``,
    which the job gets as the --reference file)."""
    step = STUDY.owner(wildcards.subject).preprocess[step_position(wildcards) - 1]
    return {key: value for key, value in step.items() if key not in ("step", "reference")}


def step_inputs(wildcards):
    """The subject's files before the step (raw files, or the previous stage's) and, for
    ``affine_align``, the reference subject's image at the same stage."""
    return STUDY.step_inputs(wildcards.subject, step_position(wildcards))


def step_args(wildcards, input, output):
    """Inputs, outputs and ``--set`` settings of a preprocessing step job."""
    return quoted(subject_args(input, output) + set_args(step_settings(wildcards)))


def step_rules():
    """The preprocessing step rules the study needs: {(step, kinds, last): subjects}, where
    ``kinds`` are the subjects' optional files and ``last`` says the rule writes the prepared
    files (else temporary stage files)."""
    rules = {}
    for subject in STAGED:
        steps = STUDY.owner(subject).preprocess
        for position, step in enumerate(steps, 1):
            key = (step["step"], STUDY.subject_kinds(subject), position == len(steps))
            rules.setdefault(key, []).append(subject)
    return rules


def step_rule_name(step, kinds, last, rules):
    """``<step>`` (a stage) or ``<step>_final`` (writes the prepared files), with a ``_with_<kinds>``
    suffix when the study has subjects with different optional files."""
    base = f"{step}_final" if last else step
    variants = STUDY.variants([k for (name, k, final) in rules if (name, final) == (step, last)])
    return variant_name(base, kinds, variants)


def step_outputs(step, kinds, last):
    """Output files of a step rule: the prepared files, or the temporary files of stage ``<position>-<step>``."""
    if last:
        return {kind: STUDY.path(f"prep_{kind}") for kind in ("image", *kinds)}
    return {
        kind: temp(STUDY.path(f"stage_{kind}", stage=f"{{position}}-{step}")) for kind in ("image", *kinds)
    }


PREP_GROUP = None if any(STUDY.owner(s).reference for s in STAGED) else "prep"
"""SLURM batch of the per-subject data, preprocessing and QC jobs. None (one SLURM job each) when a
dataset has an affine_align step: its jobs join every subject to the reference subject."""


def qc_inputs(wildcards):
    """Raw image (and labels) of a subject, its prepared image (and labels, mask)."""
    raw = raw_inputs(wildcards)
    files = {"raw_image": raw["image"], **{k: v for k, v in prep_files(wildcards.subject).items() if k != "landmarks"}}
    if "labels" in raw:
        files["raw_labels"] = raw["labels"]
    return files


QC_OPTIONS = {
    "raw_image": "--raw-image", "raw_labels": "--raw-labels", "image": "--image", "labels": "--labels", "mask": "--mask",
}


ALIGNED_PAIRS = STUDY.aligned_pairs()
ALIGN_VARIANTS = STUDY.variants([STUDY.pair_kinds(*pair) for pair in ALIGNED_PAIRS])


def align_inputs(wildcards):
    """The atlas image (``reference``) and the prepared moving image, with the moving labels /
    landmarks the pair uses."""
    kinds = STUDY.pair_kinds(wildcards.atlas, wildcards.moving)
    moving = prep_files(wildcards.moving)
    files = {"reference": prep_files(wildcards.atlas)["image"], "image": moving["image"]}
    files.update({kind: moving[kind] for kind in kinds})
    return files


def align_args(wildcards, input, output):
    """Inputs, outputs and settings of an ``affine-align`` job."""
    settings = STUDY.owner(wildcards.moving).align
    return quoted(subject_args(input, output) + set_args(settings))


PAIR_LABELS = [tuple(k for k in STUDY.pair_kinds(*pair) if k == "labels") for pair in STUDY.pairs]
REGISTER_VARIANTS = STUDY.variants(PAIR_LABELS)
LABELLED = [s for pair, kinds in zip(STUDY.pairs, PAIR_LABELS) if kinds for s in pair]

TRAINED = STUDY.trained_models()
TRAIN_OPTIONS = {"images": "--images", "labels": "--labels", "val_images": "--val-images", "val_labels": "--val-labels"}


def resources_of(rule_name):
    """mem_mb and runtime (minutes) of a rule from the config's `resources` section."""
    return {key: value for key, value in STUDY.config["resources"][rule_name].items() if key != "threads"}


def threads_of(rule_name):
    """Threads of a rule from the config's `resources` section."""
    return STUDY.config["resources"][rule_name]["threads"]


ANOVA = STUDY.config["anova"]
RUN_ANOVA = bool(ANOVA["factors"])


def report_inputs(wildcards):
    """Everything the HTML report reads: config, tables, ANOVA results, the QC figures of every prepared
    subject (results/<study>/qc/<subject>.png), training logs of learned methods (registration
    outputs come with the metrics)."""
    inputs = {
        "config": STUDY.path("config"),
        "jobs": STUDY.path("jobs"),
        "metrics": STUDY.path("metrics_table"),
        "dice": STUDY.path("dice_table"),
        "summary": STUDY.path("summary_table"),
        "loss": STUDY.path("loss_table"),
    }
    if RUN_ANOVA:
        inputs["anova"] = STUDY.path("anova_dir")
    inputs["qc"] = [STUDY.path("qc", subject=subject) for subject in STUDY.prepared_subjects()]
    inputs["training"] = [STUDY.path("train_log", method=method, grid_id=train_id) for method, train_id in TRAINED]
    return inputs
