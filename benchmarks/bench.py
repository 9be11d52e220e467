"""What the benchmark scripts share: the repository's folders, the library on the path,
progress lines, file digests, the machine and the versions a run is recorded with.

Every script imports it before the library::

    import bench  # first: the atlasmap library (workflow/scripts) goes on sys.path
    from bench import say, sha256_of

    from atlasmap.contract import UNKNOWN

A script run as ``python benchmarks/<script>.py`` finds it beside itself (Python puts
the script's folder first on the path); tests put ``benchmarks/`` on the path
themselves. This is the one module of benchmarks/ that changes ``sys.path``
(``on_path``): the benchmarks measure the library in ``workflow/scripts``, never a
copy, and take every name the workflow decides with from it
(tests/unit/test_benchmarks_reuse_library.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# Run folders (not in git): models, per-run JSON, work folders.
RUNS = BENCHMARKS / "runs"
# The reports' fixed text, each filled in by its script.
TEMPLATES = BENCHMARKS / "templates"
LIBRARY = REPO / "workflow" / "scripts"

STARTED = time.time()


def on_path(*folders: str | os.PathLike) -> None:
    """Put ``folders`` first on ``sys.path`` (each once), the first named first."""
    for folder in reversed([str(f) for f in folders]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


if str(LIBRARY) not in sys.path:
    on_path(LIBRARY)


def say(message: str) -> None:
    """A progress line: the wall-clock time and the minutes since the script started."""
    elapsed = time.time() - STARTED
    print(f"[{time.strftime('%H:%M:%S')} +{elapsed / 60:5.1f} min] {message}", flush=True)


def sha256_of(path: str | os.PathLike) -> str:
    """The file's sha256, read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, value) -> None:
    """``value`` as indented JSON (numpy numbers as floats), written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def template(name: str) -> str:
    """A report's fixed text, ``benchmarks/templates/<name>`` (str.format fields in it)."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def machine() -> dict:
    """The CPU, its cores, the memory and the platform, for a run's record."""
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


PACKAGES = ("scvi-tools", "torch", "anndata", "scanpy", "numpy", "scipy")


def versions(packages=PACKAGES) -> dict:
    """Python's version, the tree's commit and each of ``packages``' installed version."""
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out = {"python": platform.python_version(), "atlasmap": f"git {commit}"}
    for name in packages:
        out[name] = version(name)
    return out
