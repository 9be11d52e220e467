"""download_query's fetching: local paths, file:// and a real HTTP server on 127.0.0.1."""

import functools
import gzip
import http.server
import threading

import pytest
from atlasmap.download import fetch, fetch_deposit, resolve_sources
from atlasmap.errors import AtlasmapInputError

FILES = {
    "matrix": "m.mtx.gz",
    "features": "f.tsv.gz",
    "barcodes": "b.tsv.gz",
    "metadata": "meta.csv.gz",
}


@pytest.fixture
def served(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_resolve_sources_from_dir_and_files():
    sources = resolve_sources({"dir": "data/gse", "files": FILES})
    assert sources == {role: f"data/gse/{name}" for role, name in FILES.items()}


def test_resolve_sources_names_the_missing_role():
    with pytest.raises(
        AtlasmapInputError, match=r"queries.x.source: no file given for \['metadata'\]"
    ):
        resolve_sources(
            {"urls": {k: v for k, v in FILES.items() if k != "metadata"}}, "queries.x.source"
        )


def test_local_plain_file_is_stored_gzipped(tmp_path):
    src = tmp_path / "features.tsv"
    src.write_text("ENSG1\tA\tGene Expression\n")
    fetch(str(src), tmp_path / "out" / "features.tsv.gz")
    assert gzip.decompress((tmp_path / "out" / "features.tsv.gz").read_bytes()) == src.read_bytes()
    assert src.exists()  # the user's file stays


def test_file_url(tmp_path):
    src = tmp_path / "b.tsv"
    src.write_text("AAAC-1\n")
    fetch(src.as_uri(), tmp_path / "b.tsv.gz")
    assert gzip.decompress((tmp_path / "b.tsv.gz").read_bytes()) == b"AAAC-1\n"


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(AtlasmapInputError, match="nope.mtx.gz: no such file"):
        fetch(str(tmp_path / "nope.mtx.gz"), tmp_path / "out.mtx.gz")
    assert not (tmp_path / "out.mtx.gz").exists()


def test_http_download(served, tmp_path):
    base, root = served
    payload = gzip.compress(b"x" * 300_000)
    (root / "m.mtx.gz").write_bytes(payload)
    fetch(f"{base}/m.mtx.gz", tmp_path / "dl" / "matrix.mtx.gz")
    assert (tmp_path / "dl" / "matrix.mtx.gz").read_bytes() == payload
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["matrix.mtx.gz"]


def test_http_404_names_the_url_and_leaves_nothing(served, tmp_path):
    base, _ = served
    dest = tmp_path / "dl" / "matrix.mtx.gz"
    with pytest.raises(AtlasmapInputError, match=rf"{base}/missing.mtx.gz: HTTP 404"):
        fetch(f"{base}/missing.mtx.gz", dest)
    assert list((tmp_path / "dl").iterdir()) == []


def test_a_failed_file_removes_the_deposit_files_already_fetched(served, tmp_path):
    base, root = served
    for role, name in FILES.items():
        if role != "metadata":
            (root / name).write_bytes(gzip.compress(role.encode()))
    dests = {role: tmp_path / "dl" / f"{role}.gz" for role in FILES}
    with pytest.raises(AtlasmapInputError, match="meta.csv.gz: HTTP 404"):
        fetch_deposit({role: f"{base}/{name}" for role, name in FILES.items()}, dests)
    assert list((tmp_path / "dl").iterdir()) == []
