# Preprocessing per subject: the dataset's `preprocess` steps (registration_core.preprocess) on
# the image; labels and mask follow the geometric steps, landmarks are mapped exactly. A QC
# figure per subject shows it before and after. An `affine_align` step registers every subject onto
# the raw image of the dataset's reference subject (an input of each prepare job, --reference).
# Pairs of a dataset with `align` get the moving image (labels, landmarks) rigidly / affinely
# pre-aligned onto the atlas grid.
#
# Snakemake outputs are fixed per rule, so rules whose optional files vary (labels, landmarks,
# mask) come in variants, one per combination the study has (see variant_name in common.smk).

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
            settings=lambda wildcards: tracked(list(STUDY.owner(wildcards.subject).preprocess)),
        wildcard_constraints:
            subject=exact_regex([s for s in PREPARED if STUDY.subject_kinds(s) == prepare_kinds]),
        log:
            f"{LOGS}/prepare/{{subject}}.log",
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
