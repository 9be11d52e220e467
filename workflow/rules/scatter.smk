# A query mapped in shards (mapping.scatter.by: sample): split by sample, each shard
# mapped, called and projected by jobs of its own, then gathered into the files that
# map_query and call_celltypes write for a query mapped whole.


checkpoint plan_shards:
    input:
        query=rules.subset_query.output.h5ad,
    output:
        plan="results/{query}/query/shards.tsv",
    log:
        "logs/plan_shards/{query}.log",
    benchmark:
        "logs/plan_shards/{query}.benchmark.tsv"
    params:
        code=library_code("plan_shards.py"),
        batch_key=reference_value("batch_key"),
        max_cells=lookup(dpath="mapping/scatter/max_cells", within=config),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=15,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/plan_shards.py"


rule map_query_shard:
    input:
        query=rules.subset_query.output.h5ad,
        plan=rules.plan_shards.output.plan,
        atlas=embedded_atlas,
        model=reference_model,
    output:
        embedded="results/{query}/{mode}/shards/{shard}/embedded.h5ad",
        qc="results/{query}/{mode}/shards/{shard}/mapping_qc.tsv",
    log:
        "logs/map_query_shard/{query}_{mode}_{shard}.log",
    benchmark:
        "logs/map_query_shard/{query}_{mode}_{shard}.benchmark.tsv"
    priority: surgery_first
    params:
        code=library_code("map_query_shard.py"),
        settings=mapping_values,
    threads: mapping_threads
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=120,
        gpu=gpu_request,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/map_query_shard.py"


rule call_celltypes_shard:
    input:
        embedded=rules.map_query_shard.output.embedded,
        reference_calls=reference_calls,
        # The expression member reads the shard's counts on all the query's genes.
        query=rules.subset_query.output.h5ad,
        plan=rules.plan_shards.output.plan,
    output:
        predictions="results/{query}/{mode}/shards/{shard}/predictions.tsv",
        calls="results/{query}/{mode}/shards/{shard}/calls.json",
    log:
        "logs/call_celltypes_shard/{query}_{mode}_{shard}.log",
    benchmark:
        "logs/call_celltypes_shard/{query}_{mode}_{shard}.benchmark.tsv"
    priority: surgery_first
    params:
        code=library_code("call_celltypes_shard.py"),
        settings=settings_values(CallSettings),
    threads: side_by_side(2)
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/call_celltypes_shard.py"


rule project_query_shard:
    input:
        embedded=rules.map_query_shard.output.embedded,
        reference_coords=reference_layout("coords"),
        reference_index=reference_layout("index"),
    output:
        projection="results/{query}/{mode}/shards/{shard}/umap.tsv",
    log:
        "logs/project_query_shard/{query}_{mode}_{shard}.log",
    benchmark:
        "logs/project_query_shard/{query}_{mode}_{shard}.benchmark.tsv"
    priority: surgery_first
    params:
        code=library_code("project_query_shard.py"),
        settings=settings_values(EmbeddingSettings),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=60,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/project_query_shard.py"


rule gather_mapping:
    input:
        shards=shard_outputs(rules.map_query_shard.output.embedded),
        shard_qc=shard_outputs(rules.map_query_shard.output.qc),
        query=rules.subset_query.output.h5ad,
        atlas=embedded_atlas,
    output:
        embedded="results/{query}/{mode}/embedded.h5ad",
        qc="results/{query}/{mode}/mapping_qc.tsv",
    log:
        "logs/gather_mapping/{query}_{mode}.log",
    benchmark:
        "logs/gather_mapping/{query}_{mode}.benchmark.tsv"
    wildcard_constraints:
        query=SCATTERED_QUERY,
    priority: surgery_first
    params:
        code=library_code("gather_mapping.py"),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/gather_mapping.py"


rule gather_calls:
    input:
        predictions=shard_outputs(rules.call_celltypes_shard.output.predictions),
        calls=shard_outputs(rules.call_celltypes_shard.output.calls),
        mapping_qc=rules.gather_mapping.output.qc,
        query=rules.subset_query.output.h5ad,
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
        "logs/gather_calls/{query}_{mode}.log",
    benchmark:
        "logs/gather_calls/{query}_{mode}.benchmark.tsv"
    wildcard_constraints:
        query=SCATTERED_QUERY,
    priority: surgery_first
    params:
        code=library_code("gather_calls.py"),
        settings=settings_values(CallSettings),
        batch_key=reference_value("batch_key"),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/gather_calls.py"
