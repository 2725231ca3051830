# Raw data. Dataset files are read in place (registration_core.data.adapters builds the manifest);
# what a dataset needs converted or generated first lands in results/<study>/data/<subject>/:
# demo subjects (from the MNI152 template shipped with nilearn), NIfTI converted from raw
# volumes or pictures, landmark CSVs converted from a dataset's point files, lung masks.
# Known-truth moving images are made from a prepared subject (results/<study>/truth/<moving>/).


rule demo_subject:
    output:
        image=STUDY.path("raw_image"),
        labels=STUDY.path("raw_labels"),
    params:
        index=lambda wildcards: demo_subject_index(wildcards.subject),
        seed=lambda wildcards: STUDY.owner(wildcards.subject).demo["seed"],
        spacing_mm=lambda wildcards: STUDY.owner(wildcards.subject).demo["spacing_mm"],
        max_disp_mm=lambda wildcards: STUDY.owner(wildcards.subject).demo["max_disp_mm"],
    wildcard_constraints:
        subject=SUBJECTS.where(lambda subject, dataset: dataset.adapter == "demo"),
    log:
        f"{LOGS}/demo_subject/{{subject}}.log",
    benchmark:
        benchmark_path(BENCHMARKS, "demo_subject", "{subject}")
    group:
        SUBJECTS.group
    threads: PAIRS.threads_of("prepare")
    resources:
        **PAIRS.resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core demo-subject --index {params.index} --seed {params.seed}"
        " --spacing-mm {params.spacing_mm} --max-disp-mm {params.max_disp_mm}"
        " --out-image {output.image} --out-labels {output.labels} > {log} 2>&1"


rule import_raw:
    input:
        raw=lambda wildcards: STUDY.owner(wildcards.subject).raw_imports[wildcards.subject].raw,
    output:
        image=STUDY.path("raw_image"),
    params:
        args=lambda wildcards: quoted(STUDY.owner(wildcards.subject).raw_imports[wildcards.subject].cli_args()),
    wildcard_constraints:
        subject=SUBJECTS.where(lambda subject, dataset: subject in dataset.raw_imports),
    log:
        f"{LOGS}/import_raw/{{subject}}.log",
    benchmark:
        benchmark_path(BENCHMARKS, "import_raw", "{subject}")
    group:
        SUBJECTS.group
    threads: PAIRS.threads_of("prepare")
    resources:
        **PAIRS.resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core import-raw {params.args} --out {output.image} > {log} 2>&1"


rule import_landmarks:
    input:
        points=lambda wildcards: STUDY.owner(wildcards.subject).landmark_imports[wildcards.subject].source,
        reference=lambda wildcards: STUDY.owner(wildcards.subject).files[wildcards.subject]["image"],
    output:
        landmarks=STUDY.path("raw_landmarks"),
    params:
        args=lambda wildcards: quoted(STUDY.owner(wildcards.subject).landmark_imports[wildcards.subject].cli_args()),
    wildcard_constraints:
        subject=SUBJECTS.where(lambda subject, dataset: subject in dataset.landmark_imports),
    log:
        f"{LOGS}/import_landmarks/{{subject}}.log",
    benchmark:
        benchmark_path(BENCHMARKS, "import_landmarks", "{subject}")
    group:
        SUBJECTS.group
    threads: PAIRS.threads_of("prepare")
    resources:
        **PAIRS.resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core import-landmarks {params.args} --reference {input.reference}"
        " --out {output.landmarks} > {log} 2>&1"


rule make_mask:
    input:
        image=lambda wildcards: STUDY.owner(wildcards.subject).files[wildcards.subject]["image"],
    output:
        mask=STUDY.path("raw_mask"),
    params:
        settings=lambda wildcards: quoted(set_args(STUDY.owner(wildcards.subject).mask)),
    wildcard_constraints:
        subject=SUBJECTS.where(lambda subject, dataset: dataset.mask is not None),
    log:
        f"{LOGS}/make_mask/{{subject}}.log",
    benchmark:
        benchmark_path(BENCHMARKS, "make_mask", "{subject}")
    group:
        SUBJECTS.group
    threads: PAIRS.threads_of("prepare")
    resources:
        **PAIRS.resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core preprocess lung-mask --image {input.image} {params.settings}"
        " --out {output.mask} > {log} 2>&1"


if STUDY.truth is not None:

    rule synth_pair:
        input:
            unpack(SUBJECTS.truth_inputs),
        output:
            **STUDY.truth_files(),
        params:
            args=SUBJECTS.truth_args,
            out_dir=lambda wildcards, output: os.path.dirname(output.moving),
        wildcard_constraints:
            moving=exact_regex(STUDY.truth.movers),
        log:
            f"{LOGS}/synth_pair/{{moving}}.log",
        benchmark:
            benchmark_path(BENCHMARKS, "synth_pair", "{moving}")
        threads: PAIRS.threads_of("prepare")
        resources:
            **PAIRS.resources_of("prepare"),
        conda:
            ENV
        shell:
            "python -m registration_core synth-pair {params.args} --out-dir {params.out_dir} > {log} 2>&1"
