# Evaluation per job: image similarity before / after (always); Dice / HD95 of the warped labels,
# landmark error, error against a known displacement (inside the atlas's mask) when the pair has
# them; Jacobian statistics of the map. The result of a registration (or evaluation) that failed for a
# reason of its input is its failure record (registration_core.failures).


rule evaluate:
    input:
        unpack(PAIRS.evaluate_inputs),
    output:
        metrics=STUDY.path("metrics"),
    params:
        args=PAIRS.evaluate_args,
        settings=lambda wildcards: tracked(STUDY.evaluate_label_settings()),
    log:
        PAIRS.job_log("evaluate"),
    benchmark:
        PAIRS.job_benchmark("evaluate")
    threads: PAIRS.threads_of("evaluate")
    resources:
        **PAIRS.resources_of("evaluate"),
    conda:
        ENV
    shell:
        "python -m registration_core evaluate {params.args} --out {output.metrics} > {log} 2>&1"
