"""IVF shards: built above flat_max, recall on clustered codes, writes and deletions keep working."""

from __future__ import annotations

import numpy as np
import pytest

from index import HashIndex, IndexOptions, hamming_distances
from index.approximate import IVFShard, default_nlist
from index.synthetic import clustered_codes
from tests.index.oracle import knn, within

N = 20_000
# One OpenMP thread: see docs/index.md "Threads" on OMP_WAIT_POLICY when other cores are busy.
OPTIONS = IndexOptions(flat_max=5_000, nlist=64, nprobe=8, batch_threads=1)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes, _ = clustered_codes(N + 100, 64, seed=21)
    ids = np.random.default_rng(0).choice(10 * N, size=N, replace=False).astype(np.int64)
    return ids, codes[:N], codes[N:]


@pytest.fixture
def index(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> HashIndex:
    ids, codes, _ = data
    return HashIndex.build_from_batches([(ids, codes, "big")], bits=64, model_version="m1", options=OPTIONS)


def tie_aware_recall(got: list, want: list) -> float:
    """Share of returned hits no farther than the true k-th distance (any of the tied codes is right)."""
    k = len(want[0])
    return float(np.mean([(g.distances <= w.distances[-1]).sum() / k for g, w in zip(got, want, strict=True)]))


def test_large_domain_is_approximate_and_recall_is_high(index: HashIndex, data: tuple) -> None:
    ids, codes, queries = data
    with index.locked_state() as state:
        assert isinstance(state.shards["big"], IVFShard)
    got = index.search(queries, 10)
    assert tie_aware_recall(got, knn(queries, ids, codes, 64, 10)) >= 0.95
    order = np.argsort(ids)
    for query, hits in zip(queries, got, strict=True):  # exact distances, (distance, id) order
        rows = order[np.searchsorted(ids[order], hits.ids)]
        assert np.array_equal(hamming_distances(query, codes[rows], 64)[0], hits.distances)
        assert np.all(np.lexsort((hits.ids, hits.distances)) == np.arange(len(hits)))


def test_ivf_remove_add_and_range_search(index: HashIndex, data: tuple) -> None:
    ids, codes, queries = data
    exact = knn(queries[:5], ids, codes, 64, 1)
    nearest = np.array([h.ids[0] for h in exact])
    assert index.remove(nearest) == len(set(nearest.tolist()))
    for hits in index.search(queries[:5], 10):
        assert not set(hits.ids.tolist()) & set(nearest.tolist())
    index.add([10 * N + 1], queries[:1], "big")
    assert index.search(queries[0], 1)[0].pairs() == [(10 * N + 1, 0)]
    # range search probes nprobe lists: a subset of the exact answer, with exact distances
    for got, want in zip(index.range_search(queries[1:4], 6), within(queries[1:4], ids, codes, 64, 6), strict=True):
        assert set(got.pairs()) <= set(want.pairs())


def test_rebuild_reasons_and_rebuilt_index(data: tuple) -> None:
    ids, codes, _ = data
    grown = HashIndex(64, "m1", OPTIONS)
    grown.add(ids, codes, "big")  # live writes keep a flat shard
    assert any("flat shard" in r for r in grown.rebuild_reasons())
    rebuilt = grown.rebuilt()
    assert rebuilt.rebuild_reasons() == [] and len(rebuilt) == N
    with rebuilt.locked_state() as state:
        assert isinstance(state.shards["big"], IVFShard)


def test_default_nlist() -> None:
    assert default_nlist(1_000_000) == 1024
    assert default_nlist(10_000_000) == 1024
    assert default_nlist(100_000) == 256
    assert default_nlist(10) == 16
