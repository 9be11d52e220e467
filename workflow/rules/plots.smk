# Neighbours, UMAP and figures: per query and mode, then both modes side by side.


rule neighbors_umap:
    input:
        embedded=rules.map_query.output.embedded,
        predictions=rules.call_celltypes.output.predictions,
        reference_coords=reference_layout("coords"),
        reference_index=reference_layout("index"),
        projections=shard_projections,
    output:
        mapped="results/{query}/{mode}/mapped.h5ad",
    log:
        "logs/neighbors_umap/{query}_{mode}.log",
    benchmark:
        "logs/neighbors_umap/{query}_{mode}.benchmark.tsv"
    priority: surgery_first
    params:
        code=library_code("neighbors_umap.py"),
        settings=settings_values(EmbeddingSettings),
    # UMAP's optimisation is serial (seeded): one thread, so the modes run side by side.
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,
        runtime=120,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/neighbors_umap.py"


rule plot_mapping:
    input:
        mapped=rules.neighbors_umap.output.mapped,
    output:
        **mapping_figure_outputs(),
    log:
        "logs/plot_mapping/{query}_{mode}.log",
    benchmark:
        "logs/plot_mapping/{query}_{mode}.benchmark.tsv"
    priority: surgery_first
    params:
        code=library_code("plot_mapping.py"),
        plots=lookup(dpath="plots", within=config),
        reference=reference_settings,
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=30,
    conda:
        "../envs/plots.yaml"
    script:
        "../scripts/plot_mapping.py"


rule plot_confusion:
    input:
        predictions=rules.call_celltypes.output.predictions,
        # The title's accuracy, as evaluate_mapping counts it (Unknown right for an unseen type).
        metrics=rules.evaluate_mapping.output.metrics,
    output:
        png=report(
            "results/{query}/{mode}/plots/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="{query}",
            subcategory="{mode}",
        ),
        vector=f"results/{{query}}/{{mode}}/plots/confusion_matrix.{VECTOR_FORMAT}",
    log:
        "logs/plot_confusion/{query}_{mode}.log",
    benchmark:
        "logs/plot_confusion/{query}_{mode}.benchmark.tsv"
    params:
        code=library_code("plot_confusion.py"),
        truth=lookup(dpath="queries/{query}/truth", within=config),
        plots=lookup(dpath="plots", within=config),
        reference=reference_settings,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/plots.yaml"
    script:
        "../scripts/plot_confusion.py"


rule compare_modes:
    input:
        surgery=expand(
            rules.neighbors_umap.output.mapped, mode="surgery", allow_missing=True
        ),
        embed=expand(
            rules.neighbors_umap.output.mapped, mode="embed", allow_missing=True
        ),
    output:
        side_by_side=report(
            "results/{query}/compare/umap_surgery_vs_embed.png",
            caption="../report/compare_umap.rst",
            category="{query}",
            subcategory="surgery vs embed",
        ),
        side_by_side_vector=f"results/{{query}}/compare/umap_surgery_vs_embed.{VECTOR_FORMAT}",
        heatmap=report(
            "results/{query}/compare/agreement_heatmap.png",
            caption="../report/compare_heatmap.rst",
            category="{query}",
            subcategory="surgery vs embed",
        ),
        heatmap_vector=f"results/{{query}}/compare/agreement_heatmap.{VECTOR_FORMAT}",
        agreement=report(
            "results/{query}/compare/agreement.tsv",
            caption="../report/compare_table.rst",
            category="{query}",
            subcategory="surgery vs embed",
        ),
        summary="results/{query}/compare/agreement.json",
    log:
        "logs/compare_modes/{query}.log",
    benchmark:
        "logs/compare_modes/{query}.benchmark.tsv"
    params:
        code=library_code("compare_modes.py"),
        plots=lookup(dpath="plots", within=config),
        reference=reference_settings,
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=30,
    conda:
        "../envs/plots.yaml"
    script:
        "../scripts/compare_modes.py"
