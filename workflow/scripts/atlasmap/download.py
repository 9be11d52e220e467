"""Fetching deposit files into ``resources/``: GEO accessions, URLs and local paths.

We use the standard library rather than pooch: pooch retries a failed transfer
from the start and knows nothing of gzip, while a 200k-cell matrix on a bad
network needs resume by HTTP range and an end-to-end gzip check. What this
module adds is exactly that: retries with exponential backoff, a timeout,
resume where the server honours ``Range``, optional sha256/md5 checksums, a
gzip integrity check, progress in the log, and a file that appears only when
complete and verified. Every error names the URL and what went wrong.

Unfinished bytes wait in ``.partial/`` beside the destination with a record of
the object they belong to (URL, ETag, Last-Modified, length), outside the
rule's output, which Snakemake deletes when a job fails: a ``retries:`` attempt
or a rerun asks only for the rest, and starts again if the object changed or
the server ignores ``Range``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
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
from .io import copy_as_gzip, gzip_errors, is_gzip, open_gzip
from .settings import DownloadSettings

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
PARTIAL_DIR = ".partial"  # beside each destination: where unfinished downloads wait


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
        with open_gzip(path) as fh:
            while fh.read(_CHUNK):
                pass
    except gzip_errors():
        return False
    return True


def _strong(etag: str | None) -> bool:
    return bool(etag) and not etag.startswith("W/")


@dataclass(frozen=True)
class Partial:
    """A download in progress, kept where a failed job does not lose it.

    The bytes (``<name>.part``) and what object they are the start of
    (``<name>.part.json``: URL, ETag, Last-Modified, total length) live in a
    ``.partial/`` folder beside the destination, never at the rule's output
    path, which Snakemake deletes when a job fails. The next attempt, in the
    same job, a ``retries:`` attempt or a rerun, asks only for the rest, and
    only when the server still serves the same object.
    """

    data: Path
    meta: Path

    @classmethod
    def beside(cls, dest: Path) -> Partial:
        folder = dest.parent / PARTIAL_DIR
        return cls(folder / f"{dest.name}.part", folder / f"{dest.name}.part.json")

    def size(self) -> int:
        return self.data.stat().st_size if self.data.exists() else 0

    def held(self, url: str) -> dict | None:
        """The record of the bytes held for ``url``; None (and nothing kept) otherwise."""
        try:
            record = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            record = None
        length = record.get("length") if isinstance(record, dict) else None
        if (
            not isinstance(record, dict)
            or record.get("url") != url
            or not self.data.exists()
            or (length is not None and self.size() > length)
        ):
            if self.data.exists() or self.meta.exists():
                log.info("%s: discarding a partial download of another object", self.data)
            self.discard()
            return None
        return record

    def start(self, record: dict) -> None:
        """Record what the bytes to come are of, and empty the data file."""
        self.data.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps(record))
        self.data.write_bytes(b"")
        os.replace(tmp, self.meta)

    def discard(self, only_if_empty: bool = False) -> None:
        if only_if_empty and self.size():
            return
        self.data.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other downloads' partials may share it
            self.data.parent.rmdir()


def _changed(held: dict, record: dict) -> str | None:
    """What tells that the server's object is not the one the partial bytes are of."""
    for key in ("etag", "last_modified", "length"):
        if held.get(key) is not None and record.get(key) != held[key]:
            return f"{key} {held[key]!r} is now {record.get(key)!r}"
    return None


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range: bytes a-b/total`` header."""
    match = re.fullmatch(r"bytes\s+(\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _open(url: str, headers: dict, timeout: float):
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and "Range" in headers:
            raise
        if err.code in (408, 429) or err.code >= 500:
            raise TransientError(f"HTTP {err.code} {err.reason}") from err
        raise AtlasmapInputError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise TransientError(f"{type(reason).__name__}: {reason}") from err


def _range_headers(held: dict | None, have: int) -> dict[str, str]:
    """The headers that continue ``have`` bytes held of the object described by ``held``."""
    if not have:
        return {}
    headers = {"Range": f"bytes={have}-"}
    # If-Range: a server that knows the object changed sends all of the new one.
    validator = held["etag"] if _strong(held.get("etag")) else held.get("last_modified")
    if validator:
        headers["If-Range"] = validator
    return headers


def _take_response(url: str, response, partial: Partial, held: dict | None, have: int):
    """Whether the response continues the bytes held (``"resume"``), starts the file
    afresh (``"start"``, recorded in ``partial``) or tells of a changed object whose bytes
    held are discarded (``"restart"``); and the object's length, where known."""
    record = {
        "url": url,
        "etag": response.headers.get("ETag"),
        "last_modified": response.headers.get("Last-Modified"),
    }
    if have and response.status == 206:
        first, record["length"] = _content_range(response.headers.get("Content-Range"))
        changed = _changed(held, record)
        if first != have or changed:
            reason = changed or f"the server sent from byte {first}, not {have}"
            log.warning("%s: the object changed on the server (%s); starting again", url, reason)
            partial.discard()
            return "restart", record["length"]
        log.info("%s: resuming at byte %d", url, have)
        return "resume", record["length"]
    if have:
        log.info("%s: server ignores ranges; downloading from the start", url)
    length = response.headers.get("Content-Length")
    record["length"] = int(length) if length is not None else None
    partial.start(record)
    return "start", record["length"]


def _stream_body(url: str, response, path: Path, have: int, total: int | None) -> int:
    """Append the response's body to ``path`` (holding ``have`` bytes), logging progress
    every 10 s; the bytes held after it."""
    done, last_report, started = have, time.monotonic(), time.monotonic()
    try:
        with open(path, "ab" if have else "wb") as out:
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
        raise TransientError(f"connection lost after {done} bytes ({type(err).__name__})") from err
    return done


def _http_attempt(url: str, partial: Partial, timeout: float) -> None:
    """One request: continue ``partial`` with a Range request, or start it afresh."""
    held = partial.held(url)
    have = partial.size() if held else 0
    if held and have and have == held.get("length"):
        log.info("%s: the %d bytes held are the whole file", url, have)
        return
    try:
        response = _open(url, _range_headers(held, have), timeout)
    except urllib.error.HTTPError as err:  # 416: the range is past the object's end
        partial.discard()
        raise TransientError(f"HTTP 416 with {have} bytes held; starting again") from err
    with response:
        taken, total = _take_response(url, response, partial, held, have)
        if taken == "restart":  # the bytes held are of another object: ask for it whole
            response.close()
            return _http_attempt(url, partial, timeout)
        done = _stream_body(url, response, partial.data, have if taken == "resume" else 0, total)
    if total is not None and done < total:
        raise TransientError(f"truncated: {done} of {total} bytes")


def _download_with_retries(url: str, partial: Partial, settings: DownloadSettings) -> None:
    """Fill ``partial`` with the whole body of ``url``: retried with backoff, resumed by
    range where the server allows, a gzip body checked end to end. When the retries
    give up, the bytes fetched stay in ``partial`` for the next attempt or rerun."""
    for attempt in range(1, settings.retries + 2):
        try:
            log.info("%s: attempt %d of %d", url, attempt, settings.retries + 1)
            _http_attempt(url, partial, settings.timeout)
            if is_gzip(partial.data) and not check_gzip(partial.data):
                partial.discard()
                raise TransientError("incomplete or corrupt gzip data")
            return
        except TransientError as err:
            if attempt > settings.retries:
                partial.discard(only_if_empty=True)
                kept = (
                    f"; the {partial.size()} bytes fetched are kept in {partial.data}, "
                    "and a rerun asks only for the rest"
                    if partial.size()
                    else ""
                )
                raise AtlasmapInputError(
                    f"{url}: failed after {attempt} attempts, the last: {err}{kept}"
                ) from err
            wait = min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))
            log.warning("%s: %s; retrying in %.1f s", url, err, wait)
            time.sleep(wait)


def _download(url: str, dest: Path, settings: DownloadSettings, checksum: str | None) -> None:
    partial = Partial.beside(dest)
    _download_with_retries(url, partial, settings)
    try:
        verify_checksum(partial.data, checksum, url)
    except AtlasmapInputError:
        partial.discard()  # the bytes are wrong: nothing worth resuming
        raise
    log.info("%s: complete, %d bytes", url, partial.size())
    _store(partial.data, dest)
    partial.discard()


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
        for role in (role for role in DEPOSIT_ROLES if role in sources):
            fetch(sources[role], dests[role], settings, (checksums or {}).get(role))
            done.append(Path(dests[role]))
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def fetch_atlas(
    url: str,
    dest: str | os.PathLike,
    settings: DownloadSettings = DownloadSettings(),
    checksum: str | None = None,
) -> None:
    """Fetch the reference atlas from ``url`` (reference.atlas_url) to ``dest``.

    Unlike deposit files, an atlas is stored as it comes (h5ad is not gzipped). A
    missing atlas without a URL is refused at planning (common.smk, reference_atlas).
    """
    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme not in {"http", "https"}:
        raise AtlasmapInputError(f"reference.atlas_url: {url!r} is not an http(s) URL")
    partial = Partial.beside(dest)
    _download_with_retries(url, partial, settings)
    try:
        verify_checksum(partial.data, checksum, url)
    except AtlasmapInputError:
        partial.discard()
        raise
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial.data, dest)
    partial.discard()
