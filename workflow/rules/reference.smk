# The references: each one's atlas (present, or fetched) and its SCANVI model (trained
# here, taken from a wheel on PyPI, or a saved folder the config names). Work on a
# reference goes under results/references/{reference}/, once for all its queries.


# The atlas and the model are fetched only where the config says where from;
# otherwise they are the user's own files and no rule outputs them: Snakemake
# deletes a job's outputs before running it (snakemake -F, a rule whose code
# changed), and a rule writing to the user's atlas or saved model folder would
# delete them. Fetched ones come again from where they were fetched. Their paths
# are the config's, so these rules match exactly those paths (wildcard_constraints).
if FETCHED_ATLASES:

    rule obtain_atlas:
        output:
            atlas="{fetched_atlas}",
        log:
            "logs/obtain_atlas/{fetched_atlas}.log",
        benchmark:
            "logs/obtain_atlas/{fetched_atlas}.benchmark.tsv"
        params:
            code=library_code("obtain_atlas.py"),
            url=fetched_reference_value(FETCHED_ATLASES, "fetched_atlas", "atlas_url"),
            checksum=fetched_reference_value(
                FETCHED_ATLASES, "fetched_atlas", "atlas_checksum"
            ),
            settings=DOWNLOAD_VALUES,
        threads: 1
        resources:
            mem_mb=1000,
            runtime=240,
        conda:
            "../envs/scanpy.yaml"
        script:
            "../scripts/obtain_atlas.py"

    # The demo makes its own atlas.
    ruleorder: generate_demo > obtain_atlas

    localrules:
        obtain_atlas,


if FETCHED_MODELS:

    rule fetch_model_package:
        output:
            model=directory("{fetched_model}"),
        log:
            "logs/fetch_model_package/{fetched_model}.log",
        benchmark:
            "logs/fetch_model_package/{fetched_model}.benchmark.tsv"
        params:
            code=library_code("fetch_model_package.py"),
            package=fetched_reference_value(
                FETCHED_MODELS, "fetched_model", "model_package"
            ),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../envs/scvi.yaml"
        script:
            "../scripts/fetch_model_package.py"

    localrules:
        fetch_model_package,


rule train_reference:
    input:
        atlas=reference_atlas,
    output:
        model=directory("results/references/{reference}/scanvi_model"),
    log:
        "logs/train_reference/{reference}.log",
    benchmark:
        "logs/train_reference/{reference}.benchmark.tsv"
    params:
        code=library_code("train_reference.py"),
        reference=training_params,
        settings=settings_values(TrainingSettings),
        seed=lookup(dpath="seed", within=config),
        accelerator=lookup(dpath="mapping/accelerator", within=config),
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=240,
        gpu=gpu_request,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/train_reference.py"


# Reference-side work, done once per reference model and reused by every query
# and both modes: the atlas on the model's genes with its latent (neither mode
# moves the atlas cells in the latent space), its Annoy index and its UMAP, and
# the calls' fit on its cells.
rule embed_reference:
    input:
        atlas=reference_atlas,
        model=reference_model,
    output:
        atlas="results/references/{reference}/embedded_atlas.h5ad",
    log:
        "logs/embed_reference/{reference}.log",
    benchmark:
        "logs/embed_reference/{reference}.benchmark.tsv"
    params:
        code=library_code("embed_reference.py"),
        settings=settings_values(MappingSettings, leave_out=SURGERY_KEYS),
    threads: side_by_side(2)
    resources:
        mem_mb=lambda wildcards, attempt: 12000 * attempt,
        runtime=60,
        gpu=inference_gpu_request,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/embed_reference.py"


# The calls' fit on the atlas (label transfer, calibration on held-out atlas batches,
# novelty cut-off): the same for every query and mode, whose atlas cells it is.
rule fit_calls:
    input:
        atlas=rules.embed_reference.output.atlas,
        # The expression member reads the atlas's counts on all its genes.
        counts=reference_atlas,
        # Its held-out latents, where it was trained here (reference.training.calibration_models).
        model=reference_model,
    output:
        model="results/references/{reference}/call_model.npz",
    log:
        "logs/fit_calls/{reference}.log",
    benchmark:
        "logs/fit_calls/{reference}.benchmark.tsv"
    params:
        code=library_code("fit_calls.py"),
        reference=reference_settings,
        settings=settings_values(CallSettings),
    threads: side_by_side(2)
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=60,
    conda:
        "../envs/scvi.yaml"
    script:
        "../scripts/fit_calls.py"


rule layout_reference:
    input:
        atlas=rules.embed_reference.output.atlas,
    output:
        coords="results/references/{reference}/umap.h5ad",
        index="results/references/{reference}/annoy_index.ann",
    log:
        "logs/layout_reference/{reference}.log",
    benchmark:
        "logs/layout_reference/{reference}.benchmark.tsv"
    params:
        code=library_code("layout_reference.py"),
        settings=settings_values(EmbeddingSettings),
    # UMAP's optimisation is serial (seeded): one thread, beside the mappings.
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
    conda:
        "../envs/scanpy.yaml"
    script:
        "../scripts/layout_reference.py"
