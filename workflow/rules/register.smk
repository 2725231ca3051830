# Training of learned methods (one model per grid point, leaving aside the grid keys used only
# at registration: io_steps, io_lr) and one registration job per method x grid point x
# (atlas, moving) pair. Fixed = atlas; the displacement field (mm, ITK convention) lives on the
# atlas grid. Pairs with labels write warped labels too. A registration that fails for a reason of
# its input records the failure in its folder and the study goes on (registration_core.failures).

if PAIRS.trained:

    rule train:
        input:
            unpack(lambda wildcards: STUDY.train_files(wildcards.method)),
        output:
            model=STUDY.path("model"),
            log=STUDY.path("train_log"),
        params:
            args=PAIRS.train_args,
            out_dir=lambda wildcards, output: os.path.dirname(output.model),
            settings=lambda wildcards: tracked(STUDY.train_params(wildcards.method, wildcards.grid_id)),
        wildcard_constraints:
            method=exact_regex(sorted({method for method, _ in PAIRS.trained})),
            grid_id=exact_regex(sorted({train_id for _, train_id in PAIRS.trained})),
        log:
            f"{LOGS}/train/{{method}}/{{grid_id}}.log",
        benchmark:
            benchmark_path(BENCHMARKS, "train", "{method}/{grid_id}")
        threads: lambda wildcards: STUDY.train_resources(wildcards.method)["threads"]
        resources:
            mem_mb=train_resource("mem_mb"),
            runtime=train_resource("runtime"),
            gpu=train_resource("gpu"),
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} python -m registration_core train --method {wildcards.method} {params.args}"
            " --out {params.out_dir} > {log} 2>&1"


rule register:
    input:
        unpack(PAIRS.register_inputs),
    output:
        # the whole folder: the method's files (warped labels when the pair has labels), or the
        # failure record of an input error (registration_core.failures)
        folder=directory(REG_DIR),
    params:
        args=PAIRS.register_args,
        settings=lambda wildcards: tracked(STUDY.register_params(wildcards.method, wildcards.grid_id)),
    log:
        PAIRS.job_log("register"),
    benchmark:
        PAIRS.job_benchmark("register")
    threads: lambda wildcards: STUDY.register_resources(wildcards.method)["threads"]
    resources:
        mem_mb=register_resource("mem_mb"),
        runtime=register_resource("runtime"),
        gpu=register_resource("gpu"),
        cpus_per_gpu=register_resource("cpus_per_gpu"),
    conda:
        ENV
    shell:
        # torch uses as many threads as the job has cores (its default, all cores, oversubscribes
        # the machine when several jobs run at once)
        "OMP_NUM_THREADS={threads} python -m registration_core register --method {wildcards.method} {params.args}"
        " --out {output.folder} > {log} 2>&1"
