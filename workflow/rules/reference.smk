# The reference model: trained here from the atlas unless the config names a saved one.


rule train_reference:
    input:
        atlas=lookup(dpath="reference/atlas", within=config),
    output:
        model=directory("results/reference/scanvi_model"),
    log:
        "logs/train_reference/train_reference.log",
    conda:
        "../envs/scvi.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=240,
        gpu=1,
    params:
        reference=lookup(dpath="reference", within=config),
        seed=lookup(dpath="seed", within=config),
        accelerator=lookup(dpath="mapping/accelerator", within=config),
    script:
        "../scripts/train_reference.py"
