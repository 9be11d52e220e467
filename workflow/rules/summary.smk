# One summary across every query, mode and reference of the run.


rule summarize_queries:
    input:
        runs=summary_inputs,
        atlases=summary_atlases,
    output:
        table=report(
            "results/summary.tsv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        figure=report(
            "results/summary_label_distribution.png",
            caption="../report/summary.rst",
            category="Summary",
        ),
        figure_vector=f"results/summary_label_distribution.{VECTOR_FORMAT}",
    log:
        "logs/summarize_queries/summarize_queries.log",
    benchmark:
        "logs/summarize_queries/summarize_queries.benchmark.tsv"
    params:
        code=library_code("summarize_queries.py"),
        runs=summary_runs,
        labels_key=summary_labels_key,
        plots=lookup(dpath="plots", within=config),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=15,
    conda:
        "../envs/plots.yaml"
    script:
        "../scripts/summarize_queries.py"
