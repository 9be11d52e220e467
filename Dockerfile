FROM condaforge/miniforge3:latest
LABEL io.github.snakemake.containerized="true"
LABEL io.github.snakemake.conda_env_hash="14026ebaffd85e542067b1e3b7be80081d66e86c066a85bee1b8cb2b1a2007a8"
# Conda environment:
#   source: workflow/envs/plots.yaml
#   prefix: /conda-envs/e40dc94b7777408bbdc6974c111cb5e5
#   # Figures and the summary table. Holds what their scripts import.
#   # Rules: plot_mapping, plot_confusion, compare_modes, summarize_queries.
#   # Pins: major.minor as conda-forge publishes them (conda's `=2.3` matches 2.3.*),
#   # each the major.minor of requirements.txt's exact pin (tests/unit/test_envs.py);
#   # names as on conda-forge (conda-forge-packages.tsv): matplotlib-base is
#   # matplotlib without a Qt GUI.
#   # Locks: `snakedeploy pin-conda-envs workflow/envs/*.yaml` solves each env and
#   # writes <env>.<platform>.pin.txt beside it (e.g. plots.linux-64.pin.txt), an
#   # explicit package list that Snakemake installs first, falling back to this
#   # file if that fails. Re-pin after editing an env; a pin file changes the env's
#   # hash, so regenerate the Dockerfile too (snakemake --containerize > Dockerfile).
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python=3.11
#     - matplotlib-base=3.11
#     - scanpy=1.11
#     - anndata=0.12
#     - h5py=3.16
#     - pandas=2.3
#     - numpy=2.4
#     - scipy=1.17
#     - pyyaml=6.0
RUN mkdir -p /conda-envs/e40dc94b7777408bbdc6974c111cb5e5
COPY workflow/envs/plots.yaml /conda-envs/e40dc94b7777408bbdc6974c111cb5e5/environment.yaml
# Conda environment:
#   source: workflow/envs/scanpy.yaml
#   prefix: /conda-envs/2633c6764bb7f5cd494185ee0e88e32a
#   # AnnData work without torch (downloads, reading, Annoy, UMAP). Holds what
#   # their scripts import.
#   # Rules: generate_demo, download_query, load_query, subset_query, obtain_atlas,
#   #   layout_reference, plan_shards, project_query_shard, gather_mapping,
#   #   neighbors_umap.
#   # Pins: major.minor as conda-forge publishes them (conda's `=2.3` matches 2.3.*),
#   # each the major.minor of requirements.txt's exact pin (tests/unit/test_envs.py);
#   # names as on conda-forge (conda-forge-packages.tsv). sklearn-ann is not on
#   # conda-forge: pip installs it, at requirements.txt's exact version.
#   # Locks: `snakedeploy pin-conda-envs workflow/envs/*.yaml` solves each env and
#   # writes <env>.<platform>.pin.txt beside it (e.g. scanpy.linux-64.pin.txt), an
#   # explicit package list that Snakemake installs first, falling back to this
#   # file if that fails. Re-pin after editing an env; a pin file changes the env's
#   # hash, so regenerate the Dockerfile too (snakemake --containerize > Dockerfile).
#   # A pin file lists conda packages only (`conda list --explicit` leaves out
#   # pip's): scanpy.post-deploy.sh, which Snakemake runs in the new env, installs
#   # sklearn-ann in an env made from scanpy.<platform>.pin.txt.
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python=3.11
#     - pip=26.3
#     - anndata=0.12
#     - scanpy=1.11
#     - pandas=2.3
#     - numpy=2.4
#     - scipy=1.17
#     - python-isal=1.7
#     - h5py=3.16
#     - scikit-learn=1.9
#     - numba=0.68
#     - zarr=3.1
#     - pyyaml=6.0
#     - umap-learn=0.5
#     - pynndescent=0.5
#     - python-annoy=1.17
#     - pip:
#         - sklearn-ann==0.1.4
RUN mkdir -p /conda-envs/2633c6764bb7f5cd494185ee0e88e32a
COPY workflow/envs/scanpy.yaml /conda-envs/2633c6764bb7f5cd494185ee0e88e32a/environment.yaml
# Conda environment:
#   source: workflow/envs/scvi.yaml
#   prefix: /conda-envs/a708b3467a5961bc035b84a75a694cb7
#   # scvi-tools and torch (fetch_model_package runs `python -m pip download`).
#   # Holds what their scripts import.
#   # Rules: fetch_model_package, train_reference, embed_reference, fit_calls,
#   #   map_query, call_celltypes, map_query_shard, call_celltypes_shard, gather_calls,
#   #   predict_baseline, evaluate_mapping.
#   # Pins: major.minor as conda-forge publishes them (conda's `=2.3` matches 2.3.*),
#   # each the major.minor of requirements.txt's exact pin, pip's of the .venv
#   # (tests/unit/test_envs.py); names as on conda-forge (conda-forge-packages.tsv):
#   # torch is pytorch there.
#   # Locks: `snakedeploy pin-conda-envs workflow/envs/*.yaml` solves each env and
#   # writes <env>.<platform>.pin.txt beside it (e.g. scvi.linux-64.pin.txt), an
#   # explicit package list that Snakemake installs first, falling back to this
#   # file if that fails. Re-pin after editing an env; a pin file changes the env's
#   # hash, so regenerate the Dockerfile too (snakemake --containerize > Dockerfile).
#   # On a login node without a GPU, set CONDA_OVERRIDE_CUDA (e.g. 12.6) so that
#   # conda picks a CUDA build of pytorch for the GPU nodes (when creating the env,
#   # and when pinning it for them).
#   channels:
#     - conda-forge
#     - nodefaults
#   dependencies:
#     - python=3.11
#     - pip=26.3
#     - pytorch=2.13
#     - lightning=2.6
#     - torchmetrics=1.9
#     - scvi-tools=1.4
#     - anndata=0.12
#     - h5py=3.16
#     - scanpy=1.11
#     - pandas=2.3
#     - numpy=2.4
#     - scipy=1.17
#     - scikit-learn=1.9
#     - threadpoolctl=3.8
#     - numba=0.68
#     - zarr=3.1
#     - pyyaml=6.0
RUN mkdir -p /conda-envs/a708b3467a5961bc035b84a75a694cb7
COPY workflow/envs/scvi.yaml /conda-envs/a708b3467a5961bc035b84a75a694cb7/environment.yaml

RUN conda env create --prefix /conda-envs/e40dc94b7777408bbdc6974c111cb5e5 --file /conda-envs/e40dc94b7777408bbdc6974c111cb5e5/environment.yaml && \
    conda env create --prefix /conda-envs/2633c6764bb7f5cd494185ee0e88e32a --file /conda-envs/2633c6764bb7f5cd494185ee0e88e32a/environment.yaml && \
    conda env create --prefix /conda-envs/a708b3467a5961bc035b84a75a694cb7 --file /conda-envs/a708b3467a5961bc035b84a75a694cb7/environment.yaml && \
    conda clean --all -y
