# Shared setup: the study is planned once, at parse time, by registration_core.study; every
# file name, parameter, resource and job list of the rules below is read from it.

import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from registration_core.errors import InputError
from registration_core.study import (
    DEMO_PREFIX,
    GRID_ID_PATTERN,
    ID_PATTERN,
    Study,
    demo_subject_index,
    value_text,
    write_config,
)


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
DEMO_SUBJECT_PATTERN = rf"{DEMO_PREFIX}\d+"

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


def raw_inputs(wildcards):
    """Raw image and label map of a subject (dataset files, or the demo generator's outputs)."""
    return STUDY.dataset.files[wildcards.subject]


def prep_files(subject):
    """Preprocessed image and label map of a subject."""
    return {
        "image": STUDY.path("prep_image", subject=subject),
        "labels": STUDY.path("prep_labels", subject=subject),
    }


def register_inputs(wildcards):
    """Fixed = the atlas, moving = the image deformed onto it, both preprocessed."""
    fixed, moving = prep_files(wildcards.atlas), prep_files(wildcards.moving)
    return {
        "fixed": fixed["image"],
        "moving": moving["image"],
        "fixed_labels": fixed["labels"],
        "moving_labels": moving["labels"],
    }


def register_args(wildcards):
    """`--param key=value` arguments of a job's grid point (fixed params merged with the grid values)."""
    point = STUDY.grid_point(wildcards.method, wildcards.grid_id)
    return quoted(arg for key, value in point.params.items() for arg in ("--param", f"{key}={value_text(value)}"))


def register_resource(name):
    """Input function for one resource of a method's registration jobs."""
    return lambda wildcards: STUDY.register_resources(wildcards.method)[name]


def evaluate_inputs(wildcards):
    """Labels of the atlas and of the moving image, the warped labels and the displacement field."""
    reg_dir = STUDY.path(
        "reg_dir", method=wildcards.method, grid_id=wildcards.grid_id, atlas=wildcards.atlas, moving=wildcards.moving
    )
    return {
        "fixed_labels": prep_files(wildcards.atlas)["labels"],
        "moving_labels": prep_files(wildcards.moving)["labels"],
        "warped_labels": f"{reg_dir}/warped_labels.nii.gz",
        "displacement": f"{reg_dir}/displacement.nii.gz",
    }


def resources_of(rule_name):
    """mem_mb and runtime (minutes) of a rule from the config's `resources` section."""
    return {key: value for key, value in STUDY.config["resources"][rule_name].items() if key != "threads"}


def threads_of(rule_name):
    """Threads of a rule from the config's `resources` section."""
    return STUDY.config["resources"][rule_name]["threads"]


ANOVA = STUDY.config["anova"]
RUN_ANOVA = bool(ANOVA["factors"])


def report_inputs(wildcards):
    """Everything the HTML report reads: config, tables, ANOVA results (registration outputs come with the metrics)."""
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
    return inputs
