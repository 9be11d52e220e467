# The embedded demo: a synthetic reference atlas, and its query as a GEO-shaped 10x
# deposit and as an h5ad.


rule generate_demo:
    output:
        **deposit_file_names("resources/synthetic/deposit/DEMO_sc"),
        atlas="resources/synthetic/atlas.h5ad",
        query_h5ad="resources/synthetic/query.h5ad",
    log:
        "logs/generate_demo/generate_demo.log",
    benchmark:
        "logs/generate_demo/generate_demo.benchmark.tsv"
    params:
        code=library_code("generate_demo.py"),
        seed=lookup(dpath="seed", within=config),
        demo=lookup(dpath="demo", within=config),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/generate_demo.py"
