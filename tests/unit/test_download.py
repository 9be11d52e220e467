"""Downloads against a real HTTP server on 127.0.0.1 with fault modes.

Every loop here is bounded: few retries, sub-second timeouts and backoff, and
the server's stall is capped.
"""

import gzip
import hashlib
import logging
import time

import pytest
from atlasmap.download import (
    fetch,
    fetch_deposit,
    geo_supplementary_url,
    resolve_sources,
)
from atlasmap.errors import AtlasmapInputError
from atlasmap.settings import DownloadSettings
from fault_server import PAYLOAD, running_fault_server

FILES = {
    "matrix": "m.mtx.gz",
    "features": "f.tsv.gz",
    "barcodes": "b.tsv.gz",
    "metadata": "meta.csv.gz",
}
FAST = DownloadSettings(retries=3, timeout=0.5, backoff=0.01, max_backoff=0.05)


@pytest.fixture
def server():
    with running_fault_server() as s:
        yield s


def only_file(folder):
    return [p.name for p in folder.iterdir()]


def test_geo_supplementary_url_follows_geo_layout():
    assert (
        geo_supplementary_url("GSE278688", "GSE278688_sc_matrix.mtx.gz")
        == "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE278nnn/GSE278688/suppl/GSE278688_sc_matrix.mtx.gz"
    )
    assert geo_supplementary_url("GSE12", "x.gz", "http://h/geo/").startswith(
        "http://h/geo/series/GSEnnn/GSE12/"
    )
    with pytest.raises(AtlasmapInputError, match="not a GEO series accession"):
        geo_supplementary_url("SRP123", "x")


def test_resolve_sources_from_geo_dir_and_urls():
    geo = resolve_sources({"geo": "GSE278688", "files": FILES}, geo_mirror="http://m/geo")
    assert geo["matrix"] == "http://m/geo/series/GSE278nnn/GSE278688/suppl/m.mtx.gz"
    local = resolve_sources({"dir": "data/gse", "files": FILES})
    assert local == {role: f"data/gse/{name}" for role, name in FILES.items()}
    # The metadata table is optional; the matrix, features and barcodes are not.
    without_table = {k: v for k, v in FILES.items() if k != "metadata"}
    assert resolve_sources({"urls": without_table}) == without_table
    with pytest.raises(
        AtlasmapInputError, match=r"queries.x.source: no file given for \['barcodes'\]"
    ):
        resolve_sources(
            {"urls": {k: v for k, v in FILES.items() if k != "barcodes"}}, "queries.x.source"
        )


def test_local_plain_file_is_stored_gzipped_and_the_original_kept(tmp_path):
    src = tmp_path / "features.tsv"
    src.write_text("ENSG1\tA\tGene Expression\n")
    fetch(str(src), tmp_path / "out" / "features.tsv.gz")
    assert gzip.decompress((tmp_path / "out" / "features.tsv.gz").read_bytes()) == src.read_bytes()
    assert src.exists()
    fetch(src.as_uri(), tmp_path / "out2" / "f.tsv.gz")
    assert gzip.decompress((tmp_path / "out2" / "f.tsv.gz").read_bytes()) == src.read_bytes()


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(AtlasmapInputError, match="nope.mtx.gz: no such file"):
        fetch(str(tmp_path / "nope.mtx.gz"), tmp_path / "out.mtx.gz")
    assert not (tmp_path / "out.mtx.gz").exists()


def test_plain_download(server, tmp_path):
    dest = tmp_path / "dl" / "matrix.mtx.gz"
    fetch(server.serve("/m.mtx.gz"), dest, FAST)
    assert dest.read_bytes() == PAYLOAD
    assert only_file(dest.parent) == ["matrix.mtx.gz"]


def test_a_500_is_retried(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    with caplog.at_level(logging.WARNING):
        fetch(server.serve("/m.gz", mode="500-once"), dest, FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests["/m.gz"] == 2
    assert "HTTP 500" in caplog.text


def test_a_cut_connection_is_resumed_by_range(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    with caplog.at_level(logging.INFO):
        fetch(server.serve("/m.gz", mode="cut-once"), dest, FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges[-1] == f"bytes={len(PAYLOAD) // 2}-"
    assert "resuming at byte" in caplog.text
    assert only_file(dest.parent) == ["m.gz"]


def test_a_cut_connection_without_range_support_starts_again(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    fetch(server.serve("/m.gz", mode="cut-norange"), dest, FAST)
    assert dest.read_bytes() == PAYLOAD
    assert only_file(dest.parent) == ["m.gz"]


def test_a_truncated_gzip_without_length_is_caught_and_fetched_again(server, tmp_path, caplog):
    dest = tmp_path / "dl" / "m.gz"
    with caplog.at_level(logging.WARNING):
        fetch(server.serve("/m.gz", mode="gzip-truncated-once"), dest, FAST)
    assert dest.read_bytes() == PAYLOAD
    assert "incomplete or corrupt gzip" in caplog.text


def test_a_wrong_checksum_is_an_error_and_removes_the_file(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = server.serve("/m.gz")
    with pytest.raises(AtlasmapInputError, match=rf"{url}: sha256 checksum mismatch.*removed"):
        fetch(url, dest, FAST, checksum="sha256:" + "0" * 64)
    assert only_file(dest.parent) == []


def test_a_right_checksum_passes_and_a_verified_file_is_not_fetched_again(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = server.serve("/m.gz")
    checksum = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    fetch(url, dest, FAST, checksum=checksum)
    fetch(url, dest, FAST, checksum=checksum)
    assert server.requests["/m.gz"] == 1


def test_a_404_is_a_clear_error_without_retries(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    with pytest.raises(AtlasmapInputError, match=rf"{server.url}/missing.gz: HTTP 404"):
        fetch(server.url + "/missing.gz", dest, FAST)
    assert server.requests["/missing.gz"] == 1
    assert only_file(dest.parent) == []


def test_a_stalling_server_times_out_after_bounded_retries(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    settings = DownloadSettings(retries=1, timeout=0.3, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(AtlasmapInputError, match=r"failed after 2 attempts, the last: .*timed out"):
        fetch(server.serve("/m.gz", mode="stall"), dest, settings)
    assert time.monotonic() - start < 5
    assert only_file(dest.parent) == []


def test_retries_give_up_say_how_often_and_leave_no_output(server, tmp_path):
    dest = tmp_path / "dl" / "m.gz"
    url = server.serve("/m.gz", mode="cut-always")
    settings = DownloadSettings(retries=2, timeout=0.5, backoff=0.01)
    with pytest.raises(AtlasmapInputError, match=rf"{url}: failed after 3 attempts, the last: "):
        fetch(url, dest, settings)
    assert server.requests["/m.gz"] == 3
    # No output; the bytes fetched wait for a rerun (tests/unit/test_download_resume.py).
    assert only_file(dest.parent) == [".partial"]


def test_a_failed_file_removes_the_deposit_files_already_fetched(server, tmp_path):
    urls = {role: server.serve(f"/{name}") for role, name in FILES.items() if role != "metadata"}
    urls["metadata"] = server.url + "/absent.csv.gz"
    dests = {role: tmp_path / "dl" / f"{role}.gz" for role in FILES}
    with pytest.raises(AtlasmapInputError, match="absent.csv.gz: HTTP 404"):
        fetch_deposit(urls, dests, FAST)
    assert only_file(tmp_path / "dl") == []


@pytest.mark.parametrize("damage", ["invalid deflate block", "changed bytes"])
def test_a_damaged_local_gzip_is_refused(tmp_path, damage):
    """A damaged compressed stream is refused like a cut one, whichever way the reader
    finds out: a block it cannot decode (the ISA-L reader's own error) or a CRC
    mismatch at the end."""
    data = bytearray(PAYLOAD)
    if damage == "invalid deflate block":
        data[10] |= 0b110  # the first block's type: 3, which deflate reserves
    else:
        at = len(data) // 2
        data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    src = tmp_path / "m.mtx.gz"
    src.write_bytes(bytes(data))
    with pytest.raises(AtlasmapInputError, match="m.mtx.gz: incomplete or corrupt gzip file"):
        fetch(str(src), tmp_path / "out" / "matrix.mtx.gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_truncated_local_gzip_is_refused(tmp_path):
    src = tmp_path / "m.mtx.gz"
    src.write_bytes(PAYLOAD[:-200])
    with pytest.raises(AtlasmapInputError, match="m.mtx.gz: incomplete or corrupt gzip file"):
        fetch(str(src), tmp_path / "out" / "matrix.mtx.gz")
    assert list((tmp_path / "out").iterdir()) == []
