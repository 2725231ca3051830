# Preprocessing per subject: one job per step of the dataset's `preprocess` list
# (registration_core.preprocessing.steps), each reading the files the step before wrote. Labels and mask
# follow the geometric steps, landmarks are mapped exactly. Intermediate stages are temporary
# files under results/<study>/prep/<subject>/stages/<position>-<step>/; the last step writes the
# prepared files results/<study>/prep/<subject>/. An `affine_align` step registers every subject
# onto the reference subject's image at the same stage (--reference). Subjects without steps get a
# `prepare` job that checks and copies their files. A QC figure per subject shows it before and
# after. Pairs of a dataset with `align` get the moving image (labels, landmarks) rigidly /
# affinely pre-aligned onto the atlas grid.
#
# Snakemake outputs are fixed per rule, so rules whose optional files vary (labels, landmarks,
# mask) come in variants, one per combination the study has (see variant_name in common.smk),
# and each step has a rule for intermediate stages and one (`<step>_final`) for the last step.

STEP_RULES = step_rules()

for (step, step_kinds, last), step_subjects in STEP_RULES.items():

    rule:
        name:
            step_rule_name(step, step_kinds, last, STEP_RULES)
        input:
            unpack(step_inputs),
        output:
            **step_outputs(step, step_kinds, last),
        params:
            command=step.replace("_", "-"),
            args=step_args,
            settings=lambda wildcards: tracked(step_settings(wildcards)),
        wildcard_constraints:
            subject=exact_regex(step_subjects),
            position=r"[0-9]+",
        log:
            f"{LOGS}/preprocess/{{subject}}/final-{step}.log" if last else f"{LOGS}/preprocess/{{subject}}/{{position}}-{step}.log",
        group:
            PREP_GROUP
        threads: threads_of("prepare")
        resources:
            **resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core preprocess {params.command} {params.args} > {log} 2>&1"


for prepare_kinds in PREPARE_VARIANTS:

    rule:
        name:
            variant_name("prepare", prepare_kinds, PREPARE_VARIANTS)
        input:
            unpack(raw_inputs),
        output:
            **{kind: STUDY.path(f"prep_{kind}") for kind in ("image", *prepare_kinds)},
        params:
            args=prepare_args,
        wildcard_constraints:
            subject=exact_regex(
                [s for s in PREPARED if not STUDY.owner(s).preprocess and STUDY.subject_kinds(s) == prepare_kinds]
            ),
        log:
            f"{LOGS}/prepare/{{subject}}.log",
        group:
            PREP_GROUP
        threads: threads_of("prepare")
        resources:
            **resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core prepare {params.args} > {log} 2>&1"


rule qc:
    input:
        unpack(qc_inputs),
    output:
        png=STUDY.path("qc"),
    params:
        args=lambda wildcards, input: quoted(option_args(input, QC_OPTIONS)),
    wildcard_constraints:
        subject=exact_regex(PREPARED),
    log:
        f"{LOGS}/qc/{{subject}}.log",
    group:
        PREP_GROUP
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core qc {params.args} --out {output.png} > {log} 2>&1"


for align_kinds in ALIGN_VARIANTS:
    align_subjects = [s for pair in ALIGNED_PAIRS for s in pair if set(align_kinds) <= set(STUDY.subject_kinds(s))]

    rule:
        name:
            variant_name("align", align_kinds, ALIGN_VARIANTS)
        input:
            unpack(align_inputs),
        output:
            **STUDY.align_outputs("{atlas}", "{moving}", align_kinds),
        params:
            args=align_args,
            settings=lambda wildcards: tracked(STUDY.owner(wildcards.moving).align),
        wildcard_constraints:
            atlas=exact_regex(align_subjects),
            moving=exact_regex(align_subjects),
        log:
            f"{LOGS}/align/{{atlas}}__{{moving}}.log",
        threads: threads_of("prepare")
        resources:
            **resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core preprocess affine-align {params.args} > {log} 2>&1"


if len(ALIGN_VARIANTS) > 1:
    workflow.ruleorder(*(variant_name("align", kinds, ALIGN_VARIANTS) for kinds in ALIGN_VARIANTS))
