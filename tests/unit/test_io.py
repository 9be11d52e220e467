"""Outputs appear whole or not at all."""

import gzip

import pytest
from atlasmap.io import atomic_path, copy_as_gzip


def test_atomic_path_moves_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("whole")
        assert not target.exists()
    assert target.read_text() == "whole"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_leaves_nothing_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_copy_as_gzip_compresses_plain_files_and_copies_gzip_ones(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("a\tb\n")
    copy_as_gzip(plain, tmp_path / "a.tsv.gz")
    assert gzip.decompress((tmp_path / "a.tsv.gz").read_bytes()) == b"a\tb\n"
    copy_as_gzip(tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz")
    assert (tmp_path / "b.tsv.gz").read_bytes() == (tmp_path / "a.tsv.gz").read_bytes()
