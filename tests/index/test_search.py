"""Exact search against a brute-force oracle; writes; domains. Every test runs on both backends (conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from index import CodeFormatError, CodeSpaceError, DuplicateIdError
from index.synthetic import clustered_codes, random_codes
from tests.index.conftest import Backend
from tests.index.oracle import assert_same_neighbours, knn, within


def shuffled_ids(n: int, seed: int) -> np.ndarray:
    """Distinct, unordered, sparse ids (the index must not assume 0..n-1 or insertion order)."""
    rng = np.random.default_rng(seed)
    return rng.choice(10 * n, size=n, replace=False).astype(np.int64)


@pytest.mark.parametrize(("bits", "k"), [(8, 1), (8, 25), (16, 10), (64, 10), (128, 100)])
def test_search_equals_oracle_with_ties(backend: Backend, bits: int, k: int) -> None:
    """8- and 16-bit codes give ties at almost every distance, the ordering rule must decide them."""
    codes = random_codes(3000, bits, seed=bits)
    ids = shuffled_ids(3000, seed=1)
    index = backend.new(bits)
    for part in np.array_split(np.arange(3000), 5):  # several adds, ids out of order
        index.add(ids[part], codes[part], "database")
    queries = np.concatenate([random_codes(20, bits, seed=99), codes[:5]])
    for got, want in zip(index.search(queries, k), knn(queries, ids, codes, bits, k), strict=True):
        assert_same_neighbours(got, want)
    single = index.search(queries[0], k)  # one code [B]: the single-query path
    assert single[0].pairs() == index.search(queries[:2], k)[0].pairs()


def test_clustered_codes_and_several_domains_merge_exactly(backend: Backend) -> None:
    codes, _ = clustered_codes(4000, 64, seed=3)
    ids = shuffled_ids(4000, seed=2)
    domains = np.array(["a", "b", "c", "d"])[np.arange(4000) % 4]
    index = backend.new(64)
    for name in "abcd":
        mask = domains == name
        index.add(ids[mask], codes[mask], name)
    queries = codes[:30] ^ np.uint8(1)
    for got, want in zip(index.search(queries, 50), knn(queries, ids, codes, 64, 50), strict=True):
        assert_same_neighbours(got, want)
    mask = domains == "c"
    for got, want in zip(
        index.search(queries, 7, domain="c"), knn(queries, ids[mask], codes[mask], 64, 7), strict=True
    ):
        assert_same_neighbours(got, want)
    assert index.domains() == {"a": 1000, "b": 1000, "c": 1000, "d": 1000}


def test_small_domain_in_a_large_index_still_returns_k_hits(backend: Backend) -> None:
    codes = random_codes(20_000, 64, seed=5)
    index = backend.new(64)
    index.add(np.arange(19_990), codes[:19_990], "database")
    index.add(np.arange(19_990, 20_000), codes[19_990:], "query")
    hits = index.search(codes[:3], 10, domain="query")
    assert all(len(h) == 10 and set(h.ids.tolist()) == set(range(19_990, 20_000)) for h in hits)
    assert [len(h) for h in index.search(codes[:2], 10, domain="nowhere")] == [0, 0]


def test_k_larger_than_the_index_and_empty_index(backend: Backend) -> None:
    index = backend.new(64)
    assert [len(h) for h in index.search(np.zeros((2, 8), np.uint8), 5)] == [0, 0]
    index.add([5, 3], random_codes(2, 64), "d")
    hits = index.search(np.zeros(8, np.uint8), 1000)[0]
    assert sorted(hits.ids.tolist()) == [3, 5]


def test_max_distance_cuts_the_k_nearest(backend: Backend) -> None:
    codes = random_codes(2000, 16, seed=8)
    ids = np.arange(2000, dtype=np.int64)
    index = backend.new(16)
    index.add(ids, codes, "d")
    for got, ref in zip(index.search(codes[:10], 40, max_distance=2), knn(codes[:10], ids, codes, 16, 40), strict=True):
        assert got.pairs() == [p for p in ref.pairs() if p[1] <= 2]


def test_remove_then_search(backend: Backend) -> None:
    codes = random_codes(3000, 64, seed=9)
    ids = shuffled_ids(3000, seed=4)
    index = backend.new(64)
    index.add(ids, codes, "d")
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [10**9]])) == len(gone)  # unknown ids are ignored
    assert index.remove(gone) == 0  # idempotent
    keep = np.ones(3000, bool)
    keep[::3] = False
    assert len(index) == keep.sum() and gone[0] not in index and ids[1] in index
    queries = codes[:20]  # includes removed codes: their exact match must be gone
    for got, want in zip(index.search(queries, 10), knn(queries, ids[keep], codes[keep], 64, 10), strict=True):
        assert_same_neighbours(got, want)
    index.remove(ids)
    assert len(index) == 0 and index.domains() == {}


@pytest.mark.parametrize("radius", [0, 2, 16])
def test_range_search_radius_zero_two_and_bits(backend: Backend, radius: int) -> None:
    codes = random_codes(1500, 16, seed=radius)
    codes[100:110] = codes[0]  # exact duplicates for radius 0
    ids = shuffled_ids(1500, seed=7)
    index = backend.new(16)
    index.add(ids[:700], codes[:700], "a")
    index.add(ids[700:], codes[700:], "b")
    queries = codes[:12]
    got = index.range_search(queries, radius)
    for g, want in zip(got, within(queries, ids, codes, 16, radius), strict=True):
        assert g.pairs() == want.pairs()
    if radius == 16:
        assert all(len(g) == 1500 for g in got)
    if radius == 0:
        assert len(got[0]) == 11
    for g, want in zip(
        index.range_search(queries, radius, domain="b"),
        within(queries, ids[700:], codes[700:], 16, radius),
        strict=True,
    ):
        assert g.pairs() == want.pairs()


def test_duplicate_ids_are_refused_atomically_and_upsert_replaces(backend: Backend) -> None:
    index = backend.new(64)
    codes = random_codes(4, 64, seed=1)
    index.add([1, 2], codes[:2], "a")
    with pytest.raises(DuplicateIdError, match=r"\[2\]"):
        index.add([3, 2], codes[2:], "b")  # 2 is in domain a already
    assert 3 not in index and index.domains() == {"a": 2}
    index.upsert([2, 3], codes[2:], "b")
    assert index.domains() == {"a": 1, "b": 2}
    found = index.lookup(2)
    assert found is not None and found[0] == "b" and np.array_equal(found[1], codes[2])
    assert index.lookup(99) is None


def test_out_of_order_inserts_keep_codes_with_their_ids(backend: Backend) -> None:
    codes = random_codes(300, 64, seed=2)
    index = backend.new(64)
    index.add(np.arange(100, 200), codes[100:200], "d")
    index.add(np.arange(0, 100), codes[:100], "d")  # before every present id
    index.add(np.arange(200, 300)[::-1], codes[200:300][::-1], "d")  # after, reversed within the call
    for i in (0, 99, 150, 299):
        found = index.lookup(i)
        assert found is not None and np.array_equal(found[1], codes[i])
    assert index.search(codes[42], 1)[0].pairs() == [(42, 0)]


def test_changes_and_bad_arguments(backend: Backend) -> None:
    index = backend.new(64)
    index.add([1], random_codes(1, 64), "d", change=7)
    index.remove([1], change=5)
    assert index.last_change == 7
    index.note_change(9)
    assert index.last_change == 9
    with pytest.raises(CodeFormatError, match="128-bit"):
        index.search(np.zeros((1, 16), np.uint8), 3)
    with pytest.raises(CodeFormatError, match="k must be"):
        index.search(np.zeros(8, np.uint8), 0)
    with pytest.raises(CodeFormatError, match="radius"):
        index.range_search(np.zeros(8, np.uint8), -1)
    with pytest.raises(CodeFormatError, match="domain"):
        index.add([2], random_codes(1, 64), "")
    with pytest.raises(CodeFormatError, match="int64"):
        index.add([2], np.zeros((1, 8), np.int64), "d")
    with pytest.raises(CodeSpaceError, match="m2"):
        index.search(np.zeros(8, np.uint8), 3, model_version="m2")


def test_build_from_database_rows_and_batches(backend: Backend) -> None:
    codes = random_codes(500, 64, seed=11)
    ids = shuffled_ids(500, seed=3)
    rows = [(int(i), c.tobytes() if i % 2 else c, "a" if i % 3 else "b") for i, c in zip(ids, codes, strict=True)]
    built = backend.build(iter(rows), bits=64, model_version="m1", last_change=12)
    assert built.last_change == 12 and len(built) == 500
    for got, want in zip(built.search(codes[:10], 5), knn(codes[:10], ids, codes, 64, 5), strict=True):
        assert_same_neighbours(got, want)
    with pytest.raises(CodeFormatError, match="7 bytes"):
        backend.build([(1, b"\x00" * 7, "a")], bits=64, model_version="m1")
    with pytest.raises(DuplicateIdError):
        backend.build_from_batches([([1, 2], codes[:2], "a"), ([2], codes[2:3], "b")], bits=64, model_version="m1")
