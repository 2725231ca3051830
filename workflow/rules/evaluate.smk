# Evaluation per job: Dice / HD95 of the warped atlas-space labels, Jacobian statistics of the map.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=STUDY.path("metrics"),
    params:
        labels=quoted(STUDY.evaluate_label_args()),
    log:
        f"{LOGS}/evaluate/{{method}}/{{grid_id}}/{{atlas}}__{{moving}}.log",
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    conda:
        ENV
    shell:
        "python -m registration_core evaluate --fixed-labels {input.fixed_labels}"
        " --warped-labels {input.warped_labels} --displacement {input.displacement}"
        " --moving-labels {input.moving_labels} {params.labels} --out {output.metrics} > {log} 2>&1"
