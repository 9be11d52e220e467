"""Fetching the query deposit files into ``resources/``.

A source is a local path, a ``file://`` URL or an ``http(s)://`` URL. Every
file is stored gzip-compressed under the name scanpy's 10x reader expects,
and appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .errors import AtlasmapInputError
from .io import copy_as_gzip

log = logging.getLogger(__name__)

DEPOSIT_ROLES = ("matrix", "features", "barcodes", "metadata")


def resolve_sources(source: Mapping, where: str = "source") -> dict[str, str]:
    """Map each deposit role to a path or URL, from a config ``source`` entry.

    ``{"dir": D, "files": {role: name}}`` gives local paths ``D/name``;
    ``{"urls": {role: url}}`` gives URLs (or paths) as they are.
    """
    if "urls" in source:
        locations = dict(source["urls"])
    elif "dir" in source:
        files = source.get("files") or {}
        locations = {role: str(Path(source["dir"]) / name) for role, name in files.items()}
    else:
        raise AtlasmapInputError(f"{where}: give either 'urls' or 'dir' with 'files'")
    missing = [role for role in DEPOSIT_ROLES if role not in locations]
    if missing:
        raise AtlasmapInputError(f"{where}: no file given for {missing}")
    return {role: locations[role] for role in DEPOSIT_ROLES}


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in {"http", "https", "file"}


def fetch(location: str, dest: str | os.PathLike, timeout: float = 60.0) -> None:
    """Fetch one file (path or URL) to ``dest``, gzip-compressed, atomically."""
    dest = Path(dest)
    scheme = urllib.parse.urlparse(location).scheme
    if scheme == "file":
        location = urllib.request.url2pathname(urllib.parse.urlparse(location).path)
        scheme = ""
    if scheme in {"http", "https"}:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Download beside the destination, then compress into place: a failed
        # or cut transfer leaves neither file behind.
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmpdir:
            raw = Path(tmpdir) / "download"
            _http_get(location, raw, timeout)
            copy_as_gzip(raw, dest)
        return
    if scheme:
        raise AtlasmapInputError(
            f"{location}: unsupported URL scheme {scheme!r} (use http, https or file)"
        )
    if not Path(location).is_file():
        raise AtlasmapInputError(f"{location}: no such file")
    log.info("copying %s -> %s", location, dest)
    copy_as_gzip(location, dest)


def _http_get(url: str, dest: Path, timeout: float) -> None:
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
            if total and done != total:
                raise AtlasmapInputError(f"{url}: truncated download ({done} of {total} bytes)")
    except urllib.error.HTTPError as err:
        raise AtlasmapInputError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise AtlasmapInputError(f"{url}: {err.reason}") from err
    log.info("downloaded %s (%d bytes)", url, done)


def fetch_deposit(sources: Mapping[str, str], dests: Mapping[str, str | os.PathLike]) -> None:
    """Fetch every deposit role; on any failure, none of the outputs is left."""
    done: list[Path] = []
    try:
        for role in DEPOSIT_ROLES:
            fetch(sources[role], dests[role])
            done.append(Path(dests[role]))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise
