# Mapping each query onto the reference, by surgery or frozen embedding, and scoring it.


rule map_query:
    input:
        query=rules.subset_query.output.h5ad,
        atlas=embedded_atlas,
        model=reference_model,
    output:
        embedded="results/{query}/{mode}/embedded.h5ad",
        qc="results/{query}/{mode}/mapping_qc.tsv",
    log:
        "logs/map_query/{query}_{mode}.log",
    benchmark:
        "logs/map_query/{query}_{mode}.benchmark.tsv"
    wildcard_constraints:
        query=WHOLE_QUERY,
    # Surgery is the study's longest job: started first whenever it and another job are
    # ready and only one fits (Snakemake keeps no cores for a waiting job).
    priority: surgery_first
    params:
        code=library_code("map_query.py"),
        settings=mapping_values,
    threads: mapping_threads
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=120,
        gpu=gpu_request,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/map_query.py"


# The calls are their own step: a threshold or a method reruns them in seconds,
# never the mapping. Their fit on the atlas is made once per reference (fit_calls).
rule call_celltypes:
    input:
        embedded=rules.map_query.output.embedded,
        mapping_qc=rules.map_query.output.qc,
        reference_calls=reference_calls,
        # The expression member reads the query's counts on all its genes (and the
        # atlas's, where a mapping moved the atlas cells and the fit is made here).
        query=rules.subset_query.output.h5ad,
        atlas=reference_atlas,
    output:
        predictions="results/{query}/{mode}/predictions.tsv",
        qc=report(
            "results/{query}/{mode}/qc.tsv",
            caption="../report/qc_table.rst",
            category="{query}",
            subcategory="{mode}",
        ),
        calls=report(
            "results/{query}/{mode}/calls.json",
            caption="../report/calls.rst",
            category="{query}",
            subcategory="{mode}",
        ),
    log:
        "logs/call_celltypes/{query}_{mode}.log",
    benchmark:
        "logs/call_celltypes/{query}_{mode}.benchmark.tsv"
    wildcard_constraints:
        query=WHOLE_QUERY,
    priority: surgery_first
    params:
        code=library_code("call_celltypes.py"),
        settings=settings_values(CallSettings),
        counts_layer=reference_value("counts_layer"),
    threads: side_by_side(2)
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=60,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/call_celltypes.py"


rule predict_baseline:
    input:
        query=rules.subset_query.output.h5ad,
        atlas=embedded_atlas,
        model=reference_model,
    output:
        predictions="results/{query}/baseline/predictions.tsv",
    log:
        "logs/predict_baseline/{query}.log",
    benchmark:
        "logs/predict_baseline/{query}.benchmark.tsv"
    params:
        code=library_code("predict_baseline.py"),
        reference=reference_settings,
        baseline=lookup(dpath="baseline", within=config),
        seed=lookup(dpath="seed", within=config),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=60,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/predict_baseline.py"


rule evaluate_mapping:
    input:
        predictions=rules.call_celltypes.output.predictions,
        baseline=baseline_predictions,
        atlas=reference_atlas,
        model=reference_model,
    output:
        metrics=report(
            "results/{query}/{mode}/metrics.json",
            caption="../report/metrics.rst",
            category="{query}",
            subcategory="{mode}",
        ),
    log:
        "logs/evaluate_mapping/{query}_{mode}.log",
    benchmark:
        "logs/evaluate_mapping/{query}_{mode}.benchmark.tsv"
    params:
        code=library_code("evaluate_mapping.py"),
        truth=lookup(dpath="queries/{query}/truth", within=config),
        reference=reference_settings,
        unknown_threshold=lookup(dpath="mapping/unknown_threshold", within=config),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/evaluate_mapping.py"
