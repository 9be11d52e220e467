# The query chain: fetch a deposit's files (or read a file or folder where it is) with
# the metadata, keep the selected cells.


rule download_query:
    input:
        local=local_deposit_file,
    output:
        file="resources/queries/{query}/{file}",
    log:
        "logs/download_query/{query}_{file}.log",
    benchmark:
        "logs/download_query/{query}_{file}.benchmark.tsv"
    params:
        code=library_code("download_query.py"),
        location=deposit_location,
        checksum=deposit_checksum,
        settings=DOWNLOAD_VALUES,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/download_query.py"


rule load_query:
    input:
        # The query's files by role (a deposit's, as download_query fetched them; a
        # `path` query's, read where they are) and its metadata table, if any.
        unpack(query_inputs),
    output:
        h5ad="results/{query}/query/loaded.h5ad",
    log:
        "logs/load_query/{query}.log",
    benchmark:
        "logs/load_query/{query}.benchmark.tsv"
    params:
        code=library_code("load_query.py"),
        format=query_read_format,
        format_choice=query_read_choice,
        origin=query_origin,
        rename=lookup(dpath="queries/{query}/rename", within=config),
        metadata=lookup(dpath="queries/{query}/metadata", within=config),
        counts_layer=lookup(dpath="queries/{query}/counts_layer", within=config),
        sample_column=lookup(dpath="queries/{query}/sample_column", within=config),
        batch_key=reference_value("batch_key"),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=60,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/load_query.py"


rule subset_query:
    input:
        h5ad=rules.load_query.output.h5ad,
    output:
        h5ad="results/{query}/query/subset.h5ad",
        samples="results/{query}/query/samples.tsv",
    log:
        "logs/subset_query/{query}.log",
    benchmark:
        "logs/subset_query/{query}.benchmark.tsv"
    params:
        code=library_code("subset_query.py"),
        subset=lookup(dpath="queries/{query}/subset", within=config),
        sample_column=reference_value("batch_key"),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=30,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/subset_query.py"
