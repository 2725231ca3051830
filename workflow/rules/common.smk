# Shared setup: the study is planned once, at parse time (registration_core.study.plan); every
# file name, argument, resource and job list of the rules is read from it through the rule
# helpers of registration_core.study.rules (tested without Snakemake).

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from registration_core.errors import InputError
from registration_core.failures import print_outcome
from registration_core.layout import benchmark_path
from registration_core.study.config import ID_PATTERN, check_config_files, write_config
from registration_core.study.grid import GRID_ID_PATTERN
from registration_core.study.plan import Study, demo_subject_index, exact_regex
from registration_core.study.resources import image_shape
from registration_core.study.scheduling import guard_scheduler
from registration_core.study.rules import PairRules, SubjectRules, quoted, set_args, tracked, variant_name


# The rules call `python -m registration_core`: the interpreter running Snakemake (its virtual
# environment) comes first on PATH, unless a job's conda environment (--sdm conda) is activated.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
# A job's conda environment (envs/registration.yaml) holds the dependencies only: the package itself
# is imported from the workflow folder, so `--sdm conda` jobs run this checkout's registration_core.
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(workflow.basedir), os.environ.get("PYTHONPATH")])))
# Snakemake 9.10+ forgets to take a job started alone from the free cores (and memory, GPUs) but gives
# them back when it ends, so running jobs could hold more threads than --cores: see
# registration_core.study.scheduling.
guard_scheduler()

try:
    check_config_files(workflow.overwrite_configfiles or workflow.configfiles)
    # a job's own Snakemake process (cluster jobs, group jobs) plans again, without reading the images
    STUDY = Study(config, check_files=workflow.is_main_process)
except InputError as error:
    config_files = ", ".join(map(str, workflow.overwrite_configfiles or workflow.configfiles)) or "--config"
    raise WorkflowError(f"invalid study config ({config_files}): {error}") from None

SUBJECTS = SubjectRules(STUDY)
PAIRS = PairRules(STUDY)
LOGS = STUDY.path("logs")
BENCHMARKS = STUDY.path("benchmarks")
REG_DIR = STUDY.path("reg_dir")
ENV = "../../envs/registration.yaml"

logger.info(STUDY.describe())


wildcard_constraints:
    subject=ID_PATTERN,
    atlas=ID_PATTERN,
    moving=ID_PATTERN,
    method=ID_PATTERN,
    grid_id=GRID_ID_PATTERN,


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
    """Resource function for one resource (mem_mb, runtime, gpu) of a method's training jobs."""
    return lambda wildcards: STUDY.train_resources(wildcards.method)[name]
