# Evaluation per job: image similarity before / after (always); Dice / HD95 of the warped labels,
# landmark error, error against a known displacement (inside the atlas's mask) when the pair has
# them; Jacobian statistics of the map.


rule evaluate:
    input:
        unpack(PAIRS.evaluate_inputs),
    output:
        metrics=STUDY.path("metrics"),
    params:
        args=PAIRS.evaluate_args,
        settings=lambda wildcards: tracked(STUDY.evaluate_label_args()),
    log:
        f"{LOGS}/evaluate/{{method}}/{{grid_id}}/{{atlas}}__{{moving}}.log",
    threads: PAIRS.threads_of("evaluate")
    resources:
        **PAIRS.resources_of("evaluate"),
    conda:
        ENV
    shell:
        "python -m registration_core evaluate {params.args} --out {output.metrics} > {log} 2>&1"
