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
# mask) come in variants, one per combination the study has (every possible name: docs/rules.md),
# and each step has a rule for intermediate stages and one (`<step>_final`) for the last step.

for (step, step_kinds, last), step_subjects in SUBJECTS.step_rules().items():

    rule:
        name:
            SUBJECTS.step_rule_name(step, step_kinds, last)
        input:
            unpack(SUBJECTS.step_inputs),
        output:
            **{kind: path if last else temp(path) for kind, path in SUBJECTS.step_outputs(step, step_kinds, last).items()},
        params:
            command=step.replace("_", "-"),
            args=SUBJECTS.step_args,
            settings=lambda wildcards: tracked(SUBJECTS.step_settings(wildcards)),
        wildcard_constraints:
            subject=exact_regex(step_subjects),
            position=r"[0-9]+",
        log:
            f"{LOGS}/preprocess/{{subject}}/final-{step}.log" if last else f"{LOGS}/preprocess/{{subject}}/{{position}}-{step}.log",
        benchmark:
            benchmark_path(BENCHMARKS, "preprocess", f"{{subject}}/final-{step}" if last else f"{{subject}}/{{position}}-{step}")
        group:
            SUBJECTS.group
        threads: PAIRS.threads_of("prepare")
        resources:
            **PAIRS.resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core preprocess {params.command} {params.args} > {log} 2>&1"


for prepare_kinds in SUBJECTS.prepare_variants:

    rule:
        name:
            variant_name("prepare", prepare_kinds, SUBJECTS.prepare_variants)
        input:
            unpack(SUBJECTS.raw_inputs),
        output:
            **{kind: STUDY.path(f"prep_{kind}") for kind in ("image", *prepare_kinds)},
        params:
            args=SUBJECTS.prepare_args,
        wildcard_constraints:
            subject=exact_regex(SUBJECTS.prepare_subjects(prepare_kinds)),
        log:
            f"{LOGS}/prepare/{{subject}}.log",
        benchmark:
            benchmark_path(BENCHMARKS, "prepare", "{subject}")
        group:
            SUBJECTS.group
        threads: PAIRS.threads_of("prepare")
        resources:
            **PAIRS.resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core prepare {params.args} > {log} 2>&1"


rule qc:
    input:
        unpack(SUBJECTS.qc_inputs),
    output:
        png=STUDY.path("qc"),
    params:
        args=SUBJECTS.qc_args,
    wildcard_constraints:
        subject=exact_regex(SUBJECTS.prepared),
    log:
        f"{LOGS}/qc/{{subject}}.log",
    benchmark:
        benchmark_path(BENCHMARKS, "qc", "{subject}")
    group:
        SUBJECTS.group
    threads: PAIRS.threads_of("prepare")
    resources:
        **PAIRS.resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core qc {params.args} --out {output.png} > {log} 2>&1"


for align_kinds in SUBJECTS.align_variants:

    rule:
        name:
            variant_name("align", align_kinds, SUBJECTS.align_variants)
        input:
            unpack(SUBJECTS.align_inputs),
        output:
            **STUDY.align_outputs("{atlas}", "{moving}", align_kinds),
        params:
            args=SUBJECTS.align_args,
            settings=lambda wildcards: tracked(STUDY.owner(wildcards.moving).align),
        wildcard_constraints:
            atlas=exact_regex(SUBJECTS.align_subjects(align_kinds)),
            moving=exact_regex(SUBJECTS.align_subjects(align_kinds)),
        log:
            f"{LOGS}/align/{{atlas}}__{{moving}}.log",
        benchmark:
            benchmark_path(BENCHMARKS, "align", "{atlas}__{moving}")
        threads: PAIRS.threads_of("prepare")
        resources:
            **PAIRS.resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core preprocess affine-align {params.args} > {log} 2>&1"


if len(SUBJECTS.align_variants) > 1:
    workflow.ruleorder(*(variant_name("align", kinds, SUBJECTS.align_variants) for kinds in SUBJECTS.align_variants))
