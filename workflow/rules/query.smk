# The query chain: fetch each deposit file, read them with the metadata, keep the selected cells.


rule download_query:
    input:
        local=local_deposit_file,
    output:
        file="resources/queries/{query}/{file}",
    log:
        "logs/download_query/{query}_{file}.log",
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,
    params:
        location=deposit_location,
        checksum=deposit_checksum,
        download=lookup(dpath="download", within=config),
    script:
        "../scripts/download_query.py"


rule load_query:
    input:
        matrix=deposit_file("matrix"),
        features=deposit_file("features"),
        barcodes=deposit_file("barcodes"),
        metadata=deposit_file("metadata"),
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
