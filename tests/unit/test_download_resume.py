"""Downloads resume across attempts and reruns, not only within one try loop.

A failed job keeps its verified partial bytes in ``.partial/`` (outside the
rule's output, which Snakemake deletes), and the next call asks for the rest
with a Range request, but only of the same object.
"""

import gzip
import json
import logging
import random

import pytest
from atlasmap.download import Partial, fetch, fetch_atlas
from atlasmap.errors import AtlasmapInputError
from atlasmap.settings import DownloadSettings
from fault_server import CUT_BYTES, running_fault_server

# Incompressible, so that the file is many cuts long (about 1 MB).
BODY = gzip.compress(random.Random(0).randbytes(1_000_000), mtime=0)
OTHER = gzip.compress(random.Random(1).randbytes(1_000_000), mtime=0)
TRIES = DownloadSettings(retries=2, timeout=2, backoff=0.01, max_backoff=0.05)


@pytest.fixture
def server():
    with running_fault_server() as s:
        yield s


def failed_first_job(server, dest, etag=None):
    """Every try is cut: the call fails, leaves no output, keeps the bytes it got."""
    url = server.serve("/m.gz", BODY, "cut-range-always", etag=etag)
    with pytest.raises(AtlasmapInputError, match=r"failed after 3 attempts.*a rerun asks only"):
        fetch(url, dest, TRIES)
    assert not dest.exists()
    partial = Partial.beside(dest)
    assert partial.size() == 3 * CUT_BYTES  # each try resumed where the last one stopped
    assert json.loads(partial.meta.read_text())["url"] == url
    return url


def test_a_rerun_resumes_a_failed_download_and_fetches_each_byte_once(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest, etag='"v1"')
    server.serve("/m.gz", BODY, "ok", etag='"v1"', if_range=True)
    with caplog.at_level(logging.INFO):
        fetch(url, dest, TRIES)
    assert dest.read_bytes() == BODY
    assert f"resuming at byte {3 * CUT_BYTES}" in caplog.text
    assert server.ranges[-1] == f"bytes={3 * CUT_BYTES}-"
    assert server.sent["/m.gz"] == len(BODY) < 2 * len(BODY)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.gz"]  # .partial/ gone


def test_a_rerun_without_validators_resumes_by_url_and_length(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest)
    server.serve("/m.gz", BODY, "ok")
    fetch(url, dest, TRIES)
    assert dest.read_bytes() == BODY
    assert server.sent["/m.gz"] == len(BODY)


def test_a_server_that_ignores_range_on_the_rerun_restarts_cleanly(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest)
    server.serve("/m.gz", BODY, "norange")
    with caplog.at_level(logging.INFO):
        fetch(url, dest, TRIES)
    assert dest.read_bytes() == BODY
    assert "server ignores ranges; downloading from the start" in caplog.text
    assert not Partial.beside(dest).data.exists()


def test_a_changed_object_restarts_even_if_the_server_ignores_if_range(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest, etag='"v1"')
    server.serve("/m.gz", OTHER, "ok", etag='"v2"', if_range=False)  # 206 of the new object
    with caplog.at_level(logging.INFO):
        fetch(url, dest, TRIES)
    assert dest.read_bytes() == OTHER
    assert "the object changed on the server (etag '\"v1\"' is now '\"v2\"')" in caplog.text


def test_a_changed_object_restarts_where_the_server_honours_if_range(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest, etag='"v1"')
    sent_before = server.sent["/m.gz"]
    server.serve("/m.gz", OTHER, "ok", etag='"v2"', if_range=True)  # 200 with the new one
    fetch(url, dest, TRIES)
    assert dest.read_bytes() == OTHER
    assert server.sent["/m.gz"] - sent_before == len(OTHER)


def test_a_partial_of_another_url_is_not_resumed(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    failed_first_job(server, dest)
    other = server.serve("/other.gz", OTHER)
    fetch(other, dest, TRIES)
    assert dest.read_bytes() == OTHER
    assert server.ranges[-1] is None  # asked for the whole file


def test_a_wrong_checksum_after_a_resume_discards_the_partial(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = failed_first_job(server, dest)
    server.serve("/m.gz", BODY, "ok")
    with pytest.raises(AtlasmapInputError, match="checksum mismatch"):
        fetch(url, dest, TRIES, checksum="sha256:" + "0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_the_atlas_download_resumes_across_calls_too(server, tmp_path):
    dest = tmp_path / "reference" / "atlas.h5ad"
    url = server.serve("/atlas.h5ad", BODY, "cut-range-always", etag='"a"')
    with pytest.raises(AtlasmapInputError, match="a rerun asks only for the rest"):
        fetch_atlas(url, dest, TRIES)
    assert not dest.exists() and Partial.beside(dest).size() == 3 * CUT_BYTES
    server.serve("/atlas.h5ad", BODY, "ok", etag='"a"')
    fetch_atlas(url, dest, TRIES)
    assert dest.read_bytes() == BODY
    assert server.sent["/atlas.h5ad"] == len(BODY)
    assert [p.name for p in dest.parent.iterdir()] == ["atlas.h5ad"]
