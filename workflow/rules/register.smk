# Training of learned methods (one model per grid point, leaving aside the grid keys used only
# at registration: io_steps, io_lr) and one registration job per method x grid point x
# (atlas, moving) pair. Fixed = atlas; the displacement field (mm, ITK convention) lives on the
# atlas grid. Pairs with labels write warped labels too: a second variant of the rule when the
# study has pairs with and without labels.

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


for register_kinds in PAIRS.register_variants:

    rule:
        name:
            variant_name("register", register_kinds, PAIRS.register_variants)
        input:
            unpack(PAIRS.register_inputs),
        output:
            **PAIRS.register_outputs(REG_DIR, register_kinds),
        params:
            args=PAIRS.register_args,
            out_dir=lambda wildcards, output: os.path.dirname(output.log),
            settings=lambda wildcards: tracked(STUDY.register_params(wildcards.method, wildcards.grid_id)),
        wildcard_constraints:
            atlas=exact_regex(PAIRS.labelled) if register_kinds else ID_PATTERN,
            moving=exact_regex(PAIRS.labelled) if register_kinds else ID_PATTERN,
        log:
            f"{LOGS}/register/{{method}}/{{grid_id}}/{{atlas}}__{{moving}}.log",
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
            " --out {params.out_dir} > {log} 2>&1"


if len(PAIRS.register_variants) > 1:
    workflow.ruleorder(*(variant_name("register", kinds, PAIRS.register_variants) for kinds in PAIRS.register_variants))
