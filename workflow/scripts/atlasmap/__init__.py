"""atlasmap: the science behind the atlasmap workflow.

Pure functions, no Snakemake: every rule script is a thin wrapper that reads
``snakemake.input``/``params`` and calls one function of this package.
"""

__version__ = "0.1.0"
