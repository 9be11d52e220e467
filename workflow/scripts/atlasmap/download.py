"""Fetching deposit files into ``resources/``: GEO accessions, URLs and local paths.

We use the standard library rather than pooch: pooch retries a failed transfer
from the start and knows nothing of gzip, while a 200k-cell matrix on a bad
network needs resume by HTTP range and an end-to-end gzip check. What this
module adds is exactly that: retries with exponential backoff, a timeout,
resume where the server honours ``Range``, optional sha256/md5 checksums, a
gzip integrity check, progress in the log, and a file that appears only when
complete and verified. Every error names the URL and what went wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .contract import (  # noqa: F401 - the URL helpers are part of this module's API
    DEPOSIT_ROLES,
    GEO_MIRROR,
    geo_supplementary_url,
    is_url,
    resolve_sources,
)
from .errors import AtlasmapInputError
from .io import copy_as_gzip, is_gzip

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadSettings:
    retries: int = 5
    timeout: float = 60.0
    backoff: float = 2.0
    max_backoff: float = 60.0
    geo_mirror: str = GEO_MIRROR


class TransientError(Exception):
    """A failure worth another try (5xx, cut connection, timeout, bad gzip)."""


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, checksum: str | None, where: str) -> None:
    """``checksum`` is ``sha256:<hex>`` or ``md5:<hex>``; a mismatch is an error."""
    if not checksum:
        return
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in {"sha256", "md5"} or not expected:
        raise AtlasmapInputError(
            f"{where}: checksum {checksum!r} is not 'sha256:<hex>' or 'md5:<hex>'"
        )
    actual = _digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise AtlasmapInputError(
            f"{where}: {algorithm} checksum mismatch: expected {expected}, got {actual}; "
            "the file was removed"
        )
    log.info("%s: %s checksum verified", where, algorithm)


def check_gzip(path: Path) -> bool:
    """True when ``path`` is a complete, uncorrupted gzip stream (CRC and length checked)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error):
        return False
    return True


def _http_attempt(url: str, part: Path, timeout: float) -> None:
    """One request: continue ``part`` with a Range request, or start it afresh."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part may be whole
            raise TransientError(f"HTTP 416 with {have} bytes held; starting again") from err
        if err.code in (408, 429) or err.code >= 500:
            raise TransientError(f"HTTP {err.code} {err.reason}") from err
        raise AtlasmapInputError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise TransientError(f"{type(reason).__name__}: {reason}") from err
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            log.info("%s: server ignores ranges; downloading from the start", url)
            have = 0
        elif resumed:
            log.info("%s: resuming at byte %d", url, have)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        done, last_report, started = have, time.monotonic(), time.monotonic()
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if time.monotonic() - last_report > 10:
                        last_report = time.monotonic()
                        rate = (done - have) / max(last_report - started, 1e-9) / 1e6
                        shown = (
                            f"{100 * done / total:.0f}% of {total / 1e6:.1f} MB"
                            if total
                            else f"{done / 1e6:.1f} MB"
                        )
                        log.info("%s: %s (%.1f MB/s)", url, shown, rate)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise TransientError(
                f"connection lost after {done} bytes ({type(err).__name__})"
            ) from err
    if total is not None and done < total:
        raise TransientError(f"truncated: {done} of {total} bytes")


def _download_with_retries(url: str, part: Path, settings: DownloadSettings) -> None:
    """Fill ``part`` with the whole body of ``url``: retried with backoff, resumed by
    range where the server allows, a gzip body checked end to end."""
    for attempt in range(1, settings.retries + 2):
        try:
            log.info("%s: attempt %d of %d", url, attempt, settings.retries + 1)
            _http_attempt(url, part, settings.timeout)
            if is_gzip(part) and not check_gzip(part):
                part.unlink()
                raise TransientError("incomplete or corrupt gzip data")
            return
        except TransientError as err:
            if attempt > settings.retries:
                raise AtlasmapInputError(
                    f"{url}: failed after {attempt} attempts, the last: {err}"
                ) from err
            wait = min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))
            log.warning("%s: %s; retrying in %.1f s", url, err, wait)
            time.sleep(wait)


def _download(url: str, dest: Path, settings: DownloadSettings, checksum: str | None) -> None:
    part = dest.with_name(f".{dest.name}.part")
    try:
        _download_with_retries(url, part, settings)
        verify_checksum(part, checksum, url)
        log.info("%s: complete, %d bytes", url, part.stat().st_size)
        _store(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _store(src: Path, dest: Path) -> None:
    """Move a verified file into place, gzip-compressing it if it is not."""
    if is_gzip(src):
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    else:
        copy_as_gzip(src, dest)


def fetch(
    location: str,
    dest: str | os.PathLike,
    settings: DownloadSettings = DownloadSettings(),
    checksum: str | None = None,
) -> None:
    """Fetch one file (path, file:// or http(s):// URL) to ``dest``, gzip-compressed.

    ``dest`` appears only complete and verified. A ``dest`` already there that
    passes the checksum (or, without one, the gzip check) is not fetched again.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (verify_ok(dest, checksum) if checksum else check_gzip(dest)):
        log.info("%s: already present and verified, not fetched again", dest)
        return
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in {"http", "https"}:
        _download(location, dest, settings, checksum)
        return
    if parsed.scheme == "file":
        location = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme:
        raise AtlasmapInputError(
            f"{location}: unsupported URL scheme {parsed.scheme!r} (use http, https or file)"
        )
    source = Path(location)
    if not source.is_file():
        raise AtlasmapInputError(f"{location}: no such file")
    verify_checksum(source, checksum, location)
    if is_gzip(source) and not check_gzip(source):
        raise AtlasmapInputError(f"{location}: incomplete or corrupt gzip file")
    log.info("copying %s -> %s", location, dest)
    copy_as_gzip(source, dest)


def verify_ok(path: Path, checksum: str) -> bool:
    try:
        verify_checksum(path, checksum, str(path))
    except AtlasmapInputError:
        return False
    return True


def fetch_deposit(
    sources: Mapping[str, str],
    dests: Mapping[str, str | os.PathLike],
    settings: DownloadSettings = DownloadSettings(),
    checksums: Mapping[str, str] | None = None,
) -> None:
    """Fetch every deposit role; on any failure, none of this call's outputs is left."""
    done: list[Path] = []
    try:
        for role in DEPOSIT_ROLES:
            fetch(sources[role], dests[role], settings, (checksums or {}).get(role))
            done.append(Path(dests[role]))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def fetch_atlas(
    url: str | None,
    dest: str | os.PathLike,
    settings: DownloadSettings = DownloadSettings(),
    checksum: str | None = None,
) -> None:
    """Fetch the reference atlas, or fail with what the user must do.

    Unlike deposit files, an atlas is stored as it comes (h5ad is not gzipped).
    """
    dest = Path(dest)
    if not url:
        raise AtlasmapInputError(
            f"{dest}: the reference atlas is not there (config key reference.atlas). Put the "
            "atlas (h5ad or zarr, raw counts, the labels and batch columns) at that path, or "
            "set reference.atlas_url to fetch it; see the README, 'The scPDAC tutorial study'."
        )
    if urllib.parse.urlparse(url).scheme not in {"http", "https"}:
        raise AtlasmapInputError(f"reference.atlas_url: {url!r} is not an http(s) URL")
    part = dest.with_name(f".{dest.name}.part")
    try:
        _download_with_retries(url, part, settings)
        verify_checksum(part, checksum, url)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
