"""Sending a rule's stderr and logging to its Snakemake log file."""

from __future__ import annotations

import logging
import os
import sys

from . import __version__


def log_to(path: str | os.PathLike) -> None:
    """Redirect stderr and stdout (line-buffered) and the ``logging`` root logger to ``path``.

    Python warnings, tracebacks and library progress bars then land in the
    rule's log, where a user looks when a job fails.
    """
    sys.stderr = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    sys.stdout = sys.stderr  # libraries that print (scvi-tools' console) land there too
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    # fontTools logs every table it prunes while matplotlib embeds a font in a PDF.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    # Which release wrote this job's outputs, for a log read months later.
    logging.getLogger("atlasmap").info("atlasmap %s", __version__)
