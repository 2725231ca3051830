# Preprocessing per subject: the dataset's `preprocess` steps (registration_core.preprocess).


rule prepare:
    input:
        unpack(raw_inputs),
    output:
        image=STUDY.path("prep_image"),
        labels=STUDY.path("prep_labels"),
    params:
        steps=quoted([json.dumps(list(STUDY.dataset.preprocess))]),
    log:
        f"{LOGS}/prepare/{{subject}}.log",
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core prepare --image {input.image} --labels {input.labels}"
        " --steps {params.steps} --out-image {output.image} --out-labels {output.labels} > {log} 2>&1"
