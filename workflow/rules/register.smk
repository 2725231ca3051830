# One registration job per method x grid point x (atlas, moving) pair. Fixed = atlas; the
# displacement field (mm, ITK convention) lives on the atlas grid.


rule register:
    input:
        unpack(register_inputs),
    output:
        warped=f"{REG_DIR}/warped.nii.gz",
        warped_labels=f"{REG_DIR}/warped_labels.nii.gz",
        displacement=f"{REG_DIR}/displacement.nii.gz",
        log=f"{REG_DIR}/log.json",
    params:
        args=register_args,
        out_dir=lambda wildcards, output: os.path.dirname(output.log),
    log:
        f"{LOGS}/register/{{method}}/{{grid_id}}/{{atlas}}__{{moving}}.log",
    threads: lambda wildcards: STUDY.register_resources(wildcards.method)["threads"]
    resources:
        mem_mb=register_resource("mem_mb"),
        runtime=register_resource("runtime"),
        gpu=register_resource("gpu"),
    conda:
        ENV
    shell:
        "python -m registration_core register --method {wildcards.method}"
        " --fixed {input.fixed} --moving {input.moving}"
        " --fixed-labels {input.fixed_labels} --moving-labels {input.moving_labels}"
        " --out {params.out_dir} {params.args} > {log} 2>&1"
