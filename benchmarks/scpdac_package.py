"""The scPDAC tutorial's own package (scpdac 0.1.1 from PyPI), importable beside atlasmap.

scpdac declares scArches as a dependency, but scArches 0.6.1 does not import
under anndata 0.12, and the only thing scpdac takes from it is
``scarches.models.SCANVI`` (``scpdac.models.load_scanvi_model`` and
``scpdac.tl.extend_atlas``), which scArches re-exports from scvi-tools. So the
wheel is installed with ``pip install --no-deps --target`` into a folder of its
own, never into the project's environment, and a three-line ``scarches``
stand-in whose ``models.SCANVI`` is ``scvi.model.SCANVI`` goes beside it.

The wheel is the one ``config/chen2025.yaml`` names (``reference.model_package``,
its sha256 checked), so scpdac's packaged human model and the model atlasmap
takes out of the same wheel are the same file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import bench
import yaml
from bench import REPO

PACKAGE = yaml.safe_load((REPO / "config" / "chen2025.yaml").read_text())["reference"][
    "model_package"
]

SHIM = '''"""Stand-in for scArches: scpdac uses only scarches.models.SCANVI (scvi-tools' SCANVI)."""

from types import SimpleNamespace

from scvi.model import SCANVI

models = SimpleNamespace(SCANVI=SCANVI)
'''


def install(dest: str | Path) -> Path:
    """Download the wheel (no dependencies), install it under ``dest/site``, write the shim.

    Idempotent: a wheel or an installation already there is reused.
    """
    dest = Path(dest)
    wheels, site, shim = dest / "wheel", dest / "site", dest / "shim" / "scarches"
    pattern = f"{PACKAGE['name']}-{PACKAGE['version']}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        command += [f"{PACKAGE['name']}=={PACKAGE['version']}", "-d", str(wheels)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        found = sorted(wheels.glob(pattern))
    wheel = found[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != PACKAGE["sha256"]:
        raise RuntimeError(f"{wheel.name}: sha256 {digest}, config says {PACKAGE['sha256']}")
    if not (site / "scpdac" / "__init__.py").exists():
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile"]
        command += ["--target", str(site), str(wheel)]
        subprocess.run(command, check=True, capture_output=True, text=True)
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(SHIM)
    return dest


def wheel_dir(dest: str | Path) -> Path:
    return Path(dest) / "wheel"


def activate(dest: str | Path):
    """Put the installed scpdac and the scArches stand-in on ``sys.path``; import scpdac."""
    dest = Path(dest)
    bench.on_path(dest / "site", dest / "shim")
    import scpdac

    return scpdac
