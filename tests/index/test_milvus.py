"""Milvus (on Milvus Lite) gives exactly the FAISS answers: same codes, same ids, same (distance, id) order.

The contract tests of test_search.py run on both backends already; these add what is specific to Milvus:
identical results to FAISS on clustered codes with many duplicates (filtered, unfiltered, after deletes and
upserts), ties beyond Milvus's top-k cap, the code-space check of a collection, and the index-kind rule. The
slow tier repeats the FAISS comparison on a real Milvus 2.3.5 server (partition key) and checks its IVF.
``METAH_MILVUS_EXACTNESS_N=200000`` runs the same comparison on 200k codes (benchmarks/index/milvus-exactness.md).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import numpy as np
import pytest

from index import CodeSpaceError, HashIndex, IndexOptions, hamming_distances
from index.approximate import default_nlist
from index.milvus import TOPK_MAX, MilvusIndex, MilvusOptions, collection_name, index_kind
from index.protocol import CodeIndex
from index.synthetic import clustered_codes
from tests.index.conftest import Backend, as_code_index, milvus_options

DOMAINS = ("photo", "sketch", "clipart")


def test_both_backends_satisfy_the_protocol(backend: Backend) -> None:
    index = as_code_index(backend.new(64, "m7"))
    index.upsert([4, 9], np.zeros((2, 8), np.uint8), "a", change=3)
    assert (index.bits, index.model_version, index.last_change, len(index)) == (64, "m7", 3, 2)
    assert index.domains() == {"a": 2}
    assert isinstance(HashIndex(8, "m"), CodeIndex)


def corpus(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` clustered 64-bit codes, a tenth of them copies of 50 codes (ties by the hundred), sparse shuffled
    ids, three domains of uneven size (70 / 25 / 5 %)."""
    rng = np.random.default_rng(seed)
    codes, _ = clustered_codes(n, 64, seed=seed)
    copies = rng.choice(n, n // 10, replace=False)
    codes[copies] = codes[rng.choice(n, 50, replace=False)][rng.integers(0, 50, copies.size)]
    ids = rng.choice(20 * n, n, replace=False).astype(np.int64)
    domains = np.asarray(DOMAINS)[rng.choice(3, n, p=[0.70, 0.25, 0.05])]
    return ids, codes, domains


def batches(ids: np.ndarray, codes: np.ndarray, domains: np.ndarray, size: int = 50_000) -> list[Any]:
    out = []
    for name in DOMAINS:
        mask = np.flatnonzero(domains == name)
        out.extend((ids[part], codes[part], name) for part in np.array_split(mask, max(1, mask.size // size)))
    return out


def compare_with_faiss(client: Any, n: int, options: MilvusOptions, *, queries: int = 100) -> dict[str, Any]:
    """Build both indexes from the same codes, delete and upsert the same rows in both, then require the
    same hits (ids and distances, in order) for k-NN (k 1, 10, 100; every domain and none), ``max_distance``
    and range search. Returns figures for the benchmark record."""
    ids, codes, domains = corpus(n, seed=n)
    started = time.perf_counter()
    faiss = HashIndex.build_from_batches(batches(ids, codes, domains), bits=64, model_version="exact")
    faiss_build_s = time.perf_counter() - started
    started = time.perf_counter()
    milvus = MilvusIndex.build_from_batches(
        client,
        batches(ids, codes, domains),
        bits=64,
        model_version="exact",
        milvus=options,
    )
    milvus_build_s = time.perf_counter() - started
    try:
        rng = np.random.default_rng(1)
        gone = rng.choice(ids, n // 10, replace=False)  # deletes, including ids of duplicated codes
        assert faiss.remove(gone) == milvus.remove(gone) == gone.size
        moved = rng.choice(np.setdiff1d(ids, gone), n // 100, replace=False)  # upserts into another domain
        new_codes = codes[rng.choice(n, moved.size)]
        for index in (faiss, milvus):
            index.upsert(moved, new_codes, "sketch")
        assert len(milvus) == len(faiss) and milvus.domains() == faiss.domains()

        probes = np.concatenate([codes[rng.choice(n, queries // 2)], codes[rng.choice(n, queries // 2)] ^ np.uint8(3)])
        requests = count_requests(milvus)
        compared, figures = 0, {}
        for domain in (None, *DOMAINS):
            for k in (1, 10, 100):
                requests.clear()
                want, got = faiss.search(probes, k, domain=domain), milvus.search(probes, k, domain=domain)
                for w, g in zip(want, got, strict=True):
                    assert np.array_equal(g.distances, w.distances), (domain, k, g.distances, w.distances)
                    assert g.pairs() == w.pairs(), (domain, k)
                compared += len(want)
                if domain is None:  # requests sent; then Milvus's own top-k ids against FAISS's
                    figures[f"k{k}_requests_per_{len(probes)}_queries"] = len(requests)
                    raw = milvus._search(probes, k, "", None, None)
                    other = [not np.array_equal(np.sort(r[0]), np.sort(w.ids)) for r, w in zip(raw, want, strict=True)]
                    figures[f"k{k}_raw_milvus_other_ids"] = sum(other)
            for w, g in zip(
                faiss.search(probes, 50, domain=domain, max_distance=4),
                milvus.search(probes, 50, domain=domain, max_distance=4),
                strict=True,
            ):
                assert g.pairs() == w.pairs()
        for w, g in zip(faiss.range_search(probes[:20], 3), milvus.range_search(probes[:20], 3), strict=True):
            assert g.pairs() == w.pairs()

        single = []
        for probe in probes:
            started = time.perf_counter()
            milvus.search(probe, 10)
            single.append(time.perf_counter() - started)
        faiss_single = []
        for probe in probes:
            started = time.perf_counter()
            faiss.search(probe, 10)
            faiss_single.append(time.perf_counter() - started)
        return {
            "codes": n,
            "after_deletes": len(faiss),
            "queries_compared": compared,
            "faiss_build_s": round(faiss_build_s, 2),
            "milvus_build_s": round(milvus_build_s, 2),
            "milvus_single_k10_median_ms": round(1000 * statistics.median(single), 3),
            "faiss_single_k10_median_ms": round(1000 * statistics.median(faiss_single), 3),
            "milvus_index_type": milvus.index_type,
            **figures,
        }
    finally:
        milvus.drop()


def count_requests(index: MilvusIndex) -> list[int]:
    """Count the search requests ``index`` sends to Milvus (one element per request) from now on."""
    sent: list[int] = []
    search = index._search

    def counted(*args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return search(*args, **kwargs)

    index._search = counted  # type: ignore[method-assign]
    return sent


def test_same_hits_as_faiss_filtered_and_unfiltered_after_deletes(milvus_client: Any) -> None:
    figures = compare_with_faiss(milvus_client, 20_000, MilvusOptions(lite=True, prefix="exact20k"))
    assert figures["queries_compared"] == 4 * 3 * 100
    print("\nMILVUS-EXACTNESS " + json.dumps(figures))


@pytest.mark.slow
@pytest.mark.scale  # deselected unless METAH_MILVUS_EXACTNESS_N is set (tests/index/conftest.py)
def test_same_hits_as_faiss_at_scale(milvus_client: Any) -> None:
    n = int(os.environ["METAH_MILVUS_EXACTNESS_N"])
    figures = compare_with_faiss(milvus_client, n, MilvusOptions(lite=True, prefix=f"exact{n}"), queries=200)
    print("\nMILVUS-EXACTNESS " + json.dumps(figures))


def test_ties_beyond_the_top_k_cap(milvus_client: Any) -> None:
    """More codes at one distance than Milvus returns in one answer: still the lowest ids, in order."""
    rng = np.random.default_rng(0)
    n_copies = TOPK_MAX + 700
    codes = np.repeat(rng.integers(0, 256, (1, 8), np.uint8), n_copies + 300, axis=0)
    codes[n_copies:] = rng.integers(0, 256, (300, 8), np.uint8)
    ids = rng.choice(10 * codes.shape[0], codes.shape[0], replace=False).astype(np.int64)
    faiss = HashIndex(64, "ties")
    faiss.add(ids, codes, "d")
    milvus = MilvusIndex(milvus_client, 64, "ties", milvus=MilvusOptions(lite=True, prefix="ties"))
    try:
        milvus.add(ids, codes, "d")
        probe = codes[:1]
        for k in (10, TOPK_MAX + 200):  # k above the cap: the answer continues at the next distances
            assert milvus.search(probe, k)[0].pairs() == faiss.search(probe, k)[0].pairs()
        exact = milvus.range_search(probe, 0)[0]
        assert len(exact) == n_copies and exact.pairs() == faiss.range_search(probe, 0)[0].pairs()
    finally:
        milvus.drop()


def test_a_collection_keeps_its_code_space_and_its_rows(milvus_client: Any) -> None:
    options = MilvusOptions(lite=True, prefix="space")
    first = MilvusIndex(milvus_client, 64, "m1", milvus=options)
    try:
        first.add([1, 2], np.zeros((2, 8), np.uint8), "a", change=5)
        again = MilvusIndex(milvus_client, 64, "m1", milvus=options, last_change=5)  # another process, later
        assert len(again) == 2 and again.lookup(2) is not None and 2 in again and 3 not in again
        assert again.search(np.zeros(8, np.uint8), 1, guarantee_timestamp=first.write_timestamp)[0].pairs() == [(1, 0)]
        with pytest.raises(CodeSpaceError, match="128 bits"):
            MilvusIndex(milvus_client, 128, "m1", milvus=options)
    finally:
        first.drop()


def test_collection_names_are_valid_and_distinct_per_version() -> None:
    names = {collection_name("metah", v) for v in ("a/b", "a_b", "a b", "é", "x" * 300)}
    assert len(names) == 5
    assert all(len(name) <= 255 and name.replace("_", "").isalnum() and name.isascii() for name in names)


def test_index_kind_follows_flat_max_except_on_lite(milvus_client: Any) -> None:
    assert index_kind(1_000_000, 1_000_000, lite=False) == "BIN_FLAT"
    assert index_kind(1_000_001, 1_000_000, lite=False) == "BIN_IVF_FLAT"
    assert index_kind(10**9, 1_000_000, lite=True) == "BIN_FLAT"
    built = MilvusIndex.build_from_batches(
        milvus_client,
        [(np.arange(100), np.zeros((100, 8), np.uint8), "a")],
        bits=64,
        model_version="kind",
        options=IndexOptions(flat_max=10),
        milvus=MilvusOptions(lite=True, prefix="kind"),
    )
    try:
        assert built.index_type == "BIN_FLAT" and len(built) == 100
    finally:
        built.drop()


@pytest.mark.slow
def test_server_with_a_partition_key_gives_the_faiss_hits(milvus_server_client: Any) -> None:
    options = milvus_options(lite=False, prefix="serverexact")
    figures = compare_with_faiss(milvus_server_client, 20_000, options)
    assert figures["milvus_index_type"] == "BIN_FLAT"
    print("\nMILVUS-SERVER-EXACTNESS " + json.dumps(figures))
    probe = MilvusIndex(milvus_server_client, 64, "schema", milvus=options)
    try:
        fields = {f["name"]: f for f in milvus_server_client.describe_collection(probe.name)["fields"]}
        assert fields["domain"].get("is_partition_key") is True
    finally:
        probe.drop()


@pytest.mark.slow
def test_server_builds_ivf_above_flat_max_with_exact_distances(milvus_server_client: Any) -> None:
    ids, codes, domains = corpus(20_000, seed=5)
    faiss = HashIndex.build_from_batches(batches(ids, codes, domains), bits=64, model_version="ivf")
    milvus = MilvusIndex.build_from_batches(
        milvus_server_client,
        batches(ids, codes, domains),
        bits=64,
        model_version="ivf",
        options=IndexOptions(flat_max=5_000, nprobe=16),
        milvus=milvus_options(lite=False, prefix="ivf"),
    )
    try:
        assert milvus.index_type == "BIN_IVF_FLAT"
        state = milvus_server_client.describe_index(milvus.name, "code")
        assert state["indexed_rows"] == state["total_rows"] == 20_000, state  # sealed and indexed: IVF is searched
        probes = codes[np.random.default_rng(2).choice(codes.shape[0], 200)] ^ np.uint8(1)
        order = np.argsort(ids)
        sorted_ids, sorted_codes = ids[order], codes[order]
        recall = []
        for got, want, probe in zip(milvus.search(probes, 10), faiss.search(probes, 10), probes, strict=True):
            true = hamming_distances(probe[None, :], sorted_codes[np.searchsorted(sorted_ids, got.ids)], 64)[0]
            assert np.array_equal(got.distances, true)  # IVF candidates, exact distances
            recall.append(np.mean(got.distances <= want.distances[-1]))  # tie-aware
        print(f"\nMILVUS-SERVER-IVF recall@10 {np.mean(recall):.4f} (nlist {default_nlist(14_000)}, nprobe 16)")
        assert np.mean(recall) >= 0.95
    finally:
        milvus.drop()
