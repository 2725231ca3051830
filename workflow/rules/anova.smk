# Statistics over the grid factors: repeated measures with the pair as subject, or `anova.model: independent`
# (pairs as replicates); skipped when there are no factors.


if PAIRS.run_anova:

    rule anova:
        input:
            metrics=STUDY.path("metrics_table"),
        output:
            tables=report(
                directory(STUDY.path("anova_dir")),
                patterns=["{name}.png"],
                category="3. ANOVA",
                caption="../report/anova.rst",
            ),
        params:
            responses=",".join(PAIRS.anova["responses"]),
            factors=",".join(PAIRS.anova["factors"]),
            alpha=PAIRS.anova["alpha"],
            model=PAIRS.anova["model"],
            seed=PAIRS.anova["seed"],
        log:
            f"{LOGS}/anova.log",
        benchmark:
            benchmark_path(BENCHMARKS, "anova", "study")
        threads: PAIRS.threads_of("aggregate")
        resources:
            **PAIRS.resources_of("aggregate"),
        conda:
            ENV
        shell:
            "python -m registration_core anova --metrics {input.metrics} --responses {params.responses}"
            " --factors {params.factors} --alpha {params.alpha} --model {params.model} --seed {params.seed}"
            " --out-dir {output.tables} > {log} 2>&1"
