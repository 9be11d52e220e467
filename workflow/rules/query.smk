# The query chain: fetch the deposit, read it with its metadata, keep the selected cells.


rule download_query:
    input:
        unpack(local_deposit_files),
    output:
        matrix="resources/queries/{query}/matrix.mtx.gz",
        features="resources/queries/{query}/features.tsv.gz",
        barcodes="resources/queries/{query}/barcodes.tsv.gz",
        metadata="resources/queries/{query}/metadata.csv.gz",
    log:
        "logs/download_query/{query}.log",
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        sources=query_sources,
    script:
        "../scripts/download_query.py"


rule load_query:
    input:
        matrix=rules.download_query.output.matrix,
        features=rules.download_query.output.features,
        barcodes=rules.download_query.output.barcodes,
        metadata=rules.download_query.output.metadata,
    output:
        h5ad="results/{query}/query/loaded.h5ad",
    log:
        "logs/load_query/{query}.log",
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=60,
    params:
        rename=lookup(dpath="queries/{query}/rename", within=config),
        metadata=lookup(dpath="queries/{query}/metadata", within=config),
    script:
        "../scripts/load_query.py"


rule subset_query:
    input:
        h5ad=rules.load_query.output.h5ad,
    output:
        h5ad="results/{query}/query/subset.h5ad",
    log:
        "logs/subset_query/{query}.log",
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=30,
    params:
        subset=lookup(dpath="queries/{query}/subset", within=config),
    script:
        "../scripts/subset_query.py"
