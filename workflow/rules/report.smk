# The self-contained HTML report of the study.


rule report:
    input:
        unpack(PAIRS.report_inputs),
    output:
        html=report(STUDY.path("report"), category="4. Report", caption="../report/report.rst"),
        figures=report(
            directory(STUDY.path("report_figures")),
            patterns=["{name}.png"],
            category="4. Report",
            subcategory="Figures",
            caption="../report/figures.rst",
        ),
    params:
        study_dir=lambda wildcards, input: os.path.dirname(input.metrics),
    log:
        f"{LOGS}/report.log",
    benchmark:
        benchmark_path(BENCHMARKS, "report", "study")
    threads: PAIRS.threads_of("aggregate")
    resources:
        **PAIRS.resources_of("aggregate"),
    conda:
        ENV
    shell:
        "python -m registration_core report --study-dir {params.study_dir} --config {input.config}"
        " --out {output.html} > {log} 2>&1"
