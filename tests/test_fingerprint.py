"""Data changes are found by content: digests cached by stat, a fingerprint over names and bytes, and the data
inputs (files, folders, a builder's data_files) the prepare rule fingerprints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from datasel.config import data_inputs
from datasel.errors import ConfigError
from datasel.store import fingerprint as fp


def _cache(tmp_path: Path) -> fp.DigestCache:
    return fp.DigestCache(tmp_path / "cache" / "digests.json")


def test_digest_is_the_files_sha256(tmp_path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"x,y\n1,2\n" * 1000)
    assert fp.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert _cache(tmp_path).digest(f) == fp.file_sha256(f)


def test_an_unchanged_stat_is_not_read_again_and_a_same_size_edit_is(tmp_path, monkeypatch) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"id,label\n1,0\n2,1\n")
    cache = _cache(tmp_path)
    first = cache.digest(f)
    cache.save()
    reads: list[Path] = []
    real = fp.file_sha256
    monkeypatch.setattr(fp, "file_sha256", lambda p: reads.append(Path(p)) or real(p))
    again = _cache(tmp_path)  # a new parse: loaded from the cache file
    assert again.digest(f) == first and reads == []
    f.write_bytes(b"id,label\n1,1\n2,1\n")  # same size, other bytes
    assert again.digest(f) != first and reads == [f.resolve()]


def test_touch_keeps_the_fingerprint_and_a_byte_edit_with_an_old_mtime_changes_it(tmp_path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"id,label\n1,0\n")
    cache = _cache(tmp_path)
    before = fp.data_fingerprint([f], cache)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch
    assert fp.data_fingerprint([f], cache) == before
    f.write_bytes(b"id,label\n1,1\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # `cp -p`-style: the mtime the cache knows
    assert fp.data_fingerprint([f], cache) != before  # ctime moved: rehashed


def test_fingerprint_covers_names_and_the_set_of_files_not_their_order(tmp_path) -> None:
    a, b = tmp_path / "a.arrow", tmp_path / "b.arrow"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    cache = _cache(tmp_path)
    both = fp.data_fingerprint([a, b], cache)
    assert fp.data_fingerprint([b, a], cache) == both
    assert fp.data_fingerprint([a], cache) != both
    c = tmp_path / "c.arrow"
    b.rename(c)
    assert fp.data_fingerprint([a, c], cache) != both  # same bytes under another name


def test_a_damaged_or_unwritable_cache_only_costs_a_rehash(tmp_path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"1")
    path = tmp_path / "digests.json"
    path.write_text("{not json")
    cache = fp.DigestCache(path)
    assert cache.digest(f) == fp.file_sha256(f)
    cache.save()
    assert fp.DigestCache(path).digest(f) == fp.file_sha256(f)
    blocked = fp.DigestCache(tmp_path / "a.csv" / "under-a-file.json")  # its folder cannot be made
    blocked.digest(f)
    blocked.save()  # no exception: the run goes on without the speed-up


def test_data_inputs_list_a_folders_files_and_a_builders_data_files(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ds = tmp_path / "ds" / "train"
    ds.mkdir(parents=True)
    (ds / "data-00000-of-00001.arrow").write_bytes(b"x")
    (ds / ".lock").write_bytes(b"")
    (tmp_path / "ds" / "dataset_dict.json").write_text("{}")
    assert data_inputs({"source": "hf", "path": "ds"}) == ["ds/dataset_dict.json", "ds/train/data-00000-of-00001.arrow"]
    (tmp_path / "p1.jsonl").write_text("{}\n")
    (tmp_path / "p2.jsonl").write_text("{}\n")
    cfg = {"source": "hf", "path": "json", "data_files": "p*.jsonl"}
    assert data_inputs(cfg) == ["p1.jsonl", "p2.jsonl"]
    assert data_inputs({**cfg, "data_files": ["p2.jsonl", "hf://datasets/x/y.jsonl"]}) == ["p2.jsonl"]
    with pytest.raises(ConfigError, match="data.data_files") as exc:
        data_inputs({**cfg, "data_files": "missing.jsonl"}, file="my.yaml")
    assert "missing.jsonl" in str(exc.value) and "my.yaml" in str(exc.value)
    with pytest.raises(ConfigError, match="matches no file"):
        data_inputs({**cfg, "data_files": "q*.jsonl"})
