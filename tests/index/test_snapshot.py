"""Snapshots: round trip, memory-mapped loading, damage detection, rebuild from the database."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from index import HashIndex, IndexOptions, SnapshotError, load_or_rebuild, read_manifest
from index.approximate import IVFShard
from index.flat import FlatShard
from index.synthetic import clustered_codes, random_codes

# One OpenMP thread: see docs/index.md "Threads" on OMP_WAIT_POLICY when other cores are busy.
OPTIONS = IndexOptions(flat_max=3_000, nlist=32, nprobe=4, batch_threads=1)


def make_index(n: int = 6_000) -> tuple[HashIndex, np.ndarray, np.ndarray]:
    """A flat domain ('small') and an IVF domain ('big')."""
    codes, _ = clustered_codes(n, 64, seed=5)
    ids = np.random.default_rng(1).choice(10 * n, size=n, replace=False).astype(np.int64)
    index = HashIndex.build_from_batches(
        [(ids[:1000], codes[:1000], "small"), (ids[1000:], codes[1000:], "big")],
        bits=64,
        model_version="m1",
        options=OPTIONS,
        last_change=41,
    )
    return index, ids, codes


def results(index: HashIndex, queries: np.ndarray) -> list:
    return [h.pairs() for h in index.search(queries, 20)] + [h.pairs() for h in index.range_search(queries, 4)]


@pytest.mark.parametrize("mmap_min_bytes", [0, 1 << 40], ids=["mmap", "copied"])
def test_save_load_gives_identical_results(tmp_path: Path, mmap_min_bytes: int) -> None:
    index, ids, codes = make_index()
    path = tmp_path / "index.snap"
    index.save(path)
    loaded = HashIndex.load(path, bits=64, model_version="m1", options=OPTIONS, mmap_min_bytes=mmap_min_bytes)
    queries = codes[:25] ^ np.uint8(3)
    assert results(loaded, queries) == results(index, queries)
    assert loaded.domains() == index.domains() and loaded.last_change == 41
    with loaded.locked_state() as state:
        assert isinstance(state.shards["small"], FlatShard) and isinstance(state.shards["big"], IVFShard)
    manifest = read_manifest(path)
    assert (manifest.bits, manifest.model_version, manifest.count, manifest.last_change) == (64, "m1", 6000, 41)
    assert len(manifest.payload_sha256) == 64
    # writes after a (memory-mapped) load work and do not touch the file
    loaded.add([10**9], codes[:1], "small")
    loaded.remove(ids[:10])
    loaded.add([10**9 + 1], codes[1:2], "big")
    assert loaded.search(codes[0], 1, domain="small")[0].pairs() == [(10**9, 0)]
    assert HashIndex.load(path).domains() == index.domains()
    assert [p.name for p in tmp_path.iterdir()] == ["index.snap"]  # no temporary files left


def test_empty_index_round_trip(tmp_path: Path) -> None:
    HashIndex(128, "m2").save(tmp_path / "e.snap")
    loaded = HashIndex.load(tmp_path / "e.snap")
    assert (loaded.bits, loaded.model_version, len(loaded)) == (128, "m2", 0)


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "payload byte":
        data[len(data) // 3] ^= 0x01
    elif how == "manifest byte":
        at = data.rfind(b'"model_version"')
        data[at + 20] ^= 0x01
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "payload byte", "manifest byte", "empty"])
def test_damaged_snapshot_is_detected_and_rebuilt(tmp_path: Path, how: str) -> None:
    index, ids, codes = make_index()
    path = tmp_path / "index.snap"
    index.save(path)
    damage(path, how)
    with pytest.raises(SnapshotError) as caught:
        HashIndex.load(path)
    assert caught.value.problem == "corrupt"
    rows_read = []

    def rows():  # the database, consulted only on rebuild
        rows_read.append(True)
        domain = ["small"] * 1000 + ["big"] * (len(ids) - 1000)
        return zip(ids.tolist(), codes, domain, strict=True)

    rebuilt, report = load_or_rebuild(path, bits=64, model_version="m1", last_change=41, rows=rows, options=OPTIONS)
    assert report.source == "rebuilt" and report.problem == "corrupt" and rows_read
    queries = codes[:10]
    assert results(rebuilt, queries) == results(index, queries)
    again, report = load_or_rebuild(path, bits=64, model_version="m1", last_change=41, rows=rows, options=OPTIONS)
    assert report.source == "snapshot" and len(rows_read) == 1  # the rebuild wrote a good snapshot
    assert results(again, queries) == results(index, queries)


@pytest.mark.parametrize(
    ("bits", "model", "change", "problem"),
    [(64, "m1", 42, "stale"), (64, "m2", 41, "code_space"), (128, "m1", 41, "code_space")],
)
def test_stale_or_foreign_snapshot_is_rebuilt(tmp_path: Path, bits: int, model: str, change: int, problem: str) -> None:
    index, _, _ = make_index(2000)
    index.save(tmp_path / "s.snap")
    codes = random_codes(5, bits)
    rebuilt, report = load_or_rebuild(
        tmp_path / "s.snap",
        bits=bits,
        model_version=model,
        last_change=change,
        batches=lambda: [(np.arange(5), codes, "d")],
    )
    assert (report.source, report.problem) == ("rebuilt", problem)
    assert (rebuilt.bits, rebuilt.model_version, rebuilt.last_change, len(rebuilt)) == (bits, model, change, 5)
    assert read_manifest(tmp_path / "s.snap").model_version == model


def test_missing_snapshot(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError) as caught:
        HashIndex.load(tmp_path / "nope.snap")
    assert caught.value.problem == "missing"
    index, report = load_or_rebuild(
        tmp_path / "nope.snap", bits=64, model_version="m1", last_change=0, rows=lambda: [], save=False
    )
    assert report.problem == "missing" and len(index) == 0 and not (tmp_path / "nope.snap").exists()


def test_failed_save_leaves_the_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index, _, _ = make_index(2000)
    path = tmp_path / "index.snap"
    index.save(path)
    before = path.read_bytes()

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    index.add([10**9], random_codes(1, 64), "small")
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["index.snap"]
