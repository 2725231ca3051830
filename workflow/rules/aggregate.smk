# Study tables: the resolved config, the jobs table and the aggregated metrics.


rule resolved_config:
    output:
        config=report(STUDY.path("config"), category="1. Study", caption="../report/config.rst"),
    params:
        config=STUDY.config,
    log:
        f"{LOGS}/resolved_config.log",
    run:
        write_config(params.config, output.config)


rule plan:
    input:
        config=STUDY.path("config"),
    output:
        jobs=STUDY.path("jobs"),
    log:
        f"{LOGS}/plan.log",
    conda:
        ENV
    shell:
        "python -m registration_core plan --config {input.config} --out {output.jobs} > {log} 2>&1"


rule aggregate:
    input:
        jobs=STUDY.path("jobs"),
        metrics=[job.path("metrics") for job in STUDY.jobs],
    output:
        metrics=report(STUDY.path("metrics_table"), category="2. Results", caption="../report/metrics.rst"),
        dice=report(STUDY.path("dice_table"), category="2. Results", caption="../report/dice.rst"),
        summary=report(STUDY.path("summary_table"), category="2. Results", caption="../report/summary.rst"),
        loss=STUDY.path("loss_table"),
        failures=report(STUDY.path("failures_table"), category="2. Results", caption="../report/failures.rst"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        benchmark_path(BENCHMARKS, "aggregate", "study")
    threads: PAIRS.threads_of("aggregate")
    resources:
        **PAIRS.resources_of("aggregate"),
    conda:
        ENV
    shell:
        "python -m registration_core aggregate --jobs {input.jobs} --out-dir {params.out_dir} > {log} 2>&1"
