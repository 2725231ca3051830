# Deformable registration study: config -> demo/raw data -> preprocessing -> one registration per
# method x grid point x (atlas, moving) pair -> evaluation -> tables -> ANOVA -> HTML report.
#
#   snakemake                                         # the embedded demo (config/config.yaml)
#   snakemake --configfile config/studies/oasis-trt-2d.yaml
#
# All science lives in the registration_core package; the rules only wire files to its CLI.
# Fixed image = atlas; displacement fields are in the atlas grid (see README "Outputs").

from pathlib import Path

from snakemake.utils import min_version

# The lock (constraints.txt) and pyproject.toml's `workflow` extra: snakemake>=9.15,<10.
min_version("9.15")

# The config is validated against registration_core/study/config.schema.yaml (package data, so an
# installed package finds it too) when common.smk plans the study; every key is documented there.

if not workflow.overwrite_configfiles:
    # Only when no --configfile is given: a command-line config replaces the demo entirely
    # instead of being merged into it.
    configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/anova.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        STUDY.path("report"),


# The last line of a run: how many registrations failed (for a reason of their input: recorded as
# results, see registration_core.failures) and where the report is.
onsuccess:
    print_outcome(STUDY, finished=True)


onerror:
    print_outcome(STUDY, finished=False)
