# Raw data. Folder datasets are read in place (registration_core.datasets finds the subjects);
# the demo dataset is generated here from the MNI152 template shipped with nilearn.


rule demo_subject:
    output:
        image=STUDY.path("demo_image"),
        labels=STUDY.path("demo_labels"),
    params:
        index=lambda wildcards: demo_subject_index(wildcards.subject),
        seed=STUDY.dataset.demo.get("seed"),
        spacing_mm=STUDY.dataset.demo.get("spacing_mm"),
        max_disp_mm=STUDY.dataset.demo.get("max_disp_mm"),
    wildcard_constraints:
        subject=DEMO_SUBJECT_PATTERN,
    log:
        f"{LOGS}/demo_subject/{{subject}}.log",
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    conda:
        ENV
    shell:
        "python -m registration_core demo-subject --index {params.index} --seed {params.seed}"
        " --spacing-mm {params.spacing_mm} --max-disp-mm {params.max_disp_mm}"
        " --out-image {output.image} --out-labels {output.labels} > {log} 2>&1"
