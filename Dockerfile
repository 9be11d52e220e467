FROM condaforge/miniforge3:latest
LABEL io.github.snakemake.containerized="true"
LABEL io.github.snakemake.conda_env_hash="a03ba19adfc2fe079d1cb8c2c266dd9485963690d794671626f4fb572f76f51f"
# Conda environment:
#   source: workflow/envs/plots.yaml
#   prefix: /conda-envs/5c2d11fd9b3e5e592eb867293a5acddf
#   # Figures: plot_mapping, plot_confusion, compare_modes. Holds what their
#   # scripts import.
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
RUN mkdir -p /conda-envs/5c2d11fd9b3e5e592eb867293a5acddf
COPY workflow/envs/plots.yaml /conda-envs/5c2d11fd9b3e5e592eb867293a5acddf/environment.yaml
# Conda environment:
#   source: workflow/envs/scanpy.yaml
#   prefix: /conda-envs/64b44379b0b69831d6a894b35e1ddc20
#   # AnnData work without torch: generate_demo, download_query, load_query,
#   # subset_query, neighbors_umap (Annoy, UMAP). Holds what their scripts import.
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
RUN mkdir -p /conda-envs/64b44379b0b69831d6a894b35e1ddc20
COPY workflow/envs/scanpy.yaml /conda-envs/64b44379b0b69831d6a894b35e1ddc20/environment.yaml
# Conda environment:
#   source: workflow/envs/scvi.yaml
#   prefix: /conda-envs/040c26f4da18b94da088acdcbbe2acbd
#   # Deep-learning rules: train_reference, map_query, predict_baseline,
#   # evaluate_mapping, fetch_model_package (runs `python -m pip download`). Holds
#   # what their scripts import.
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
RUN mkdir -p /conda-envs/040c26f4da18b94da088acdcbbe2acbd
COPY workflow/envs/scvi.yaml /conda-envs/040c26f4da18b94da088acdcbbe2acbd/environment.yaml

RUN conda env create --prefix /conda-envs/5c2d11fd9b3e5e592eb867293a5acddf --file /conda-envs/5c2d11fd9b3e5e592eb867293a5acddf/environment.yaml && \
    conda env create --prefix /conda-envs/64b44379b0b69831d6a894b35e1ddc20 --file /conda-envs/64b44379b0b69831d6a894b35e1ddc20/environment.yaml && \
    conda env create --prefix /conda-envs/040c26f4da18b94da088acdcbbe2acbd --file /conda-envs/040c26f4da18b94da088acdcbbe2acbd/environment.yaml && \
    conda clean --all -y
