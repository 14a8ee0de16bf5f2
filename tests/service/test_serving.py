"""The serving pair: searches, writes and a model swap at the same time (moved here from ``index.ActiveIndex``,
which duplicated :class:`service.serving.ActivePair` without being used)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import pytest
import torch

from index import HashIndex
from index.synthetic import random_codes
from model.export import LoadedEncoder
from service.serving import ActivePair, ServingPair
from tests.concurrency import run_threads


def encoder(version: str, bits: int) -> LoadedEncoder:
    """An encoder as far as the pair is concerned: its metadata (no search here encodes anything)."""
    metadata: dict[str, Any] = {"model_version": version, "bits": bits, "input_size": [28, 28]}
    return LoadedEncoder(torch.jit.script(torch.nn.Identity()), metadata)


def pair(version: str, bits: int, count: int, seed: int) -> ServingPair:
    index = HashIndex.build_from_batches(
        [(np.arange(count), random_codes(count, bits, seed=seed), "d")], bits=bits, model_version=version
    )
    return ServingPair(encoder(version, bits), index)


def test_a_pair_refuses_an_index_of_another_model() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        ServingPair(encoder("m2", 64), pair("m1", 64, 10, seed=0).index)


def test_swap_during_searches_writes_and_a_background_rebuild() -> None:
    """Each search sees one model's encoder with that model's index; writes encoded with the old model after
    the swap are turned away (not put into the new index); the catch-up's write is in the new index."""
    active = ActivePair(pair("m1", 64, 2000, seed=2))
    new = pair("m2", 128, 3000, seed=3)
    ids = itertools.count(10**6)
    changes = itertools.count(1)
    models: set[str] = set()
    accepted: list[int] = []
    refused: list[int] = []
    replaced: list[ServingPair] = []

    def search() -> None:
        current = active.current  # one pair per request
        assert current.index.model_version == current.model_version and current.index.bits == current.bits
        query = np.zeros((1, current.bits // 8), np.uint8)
        hits = current.index.search(query, 10, model_version=current.model_version)[0]
        assert len(hits) == 10
        models.add(current.model_version)

    def write() -> None:
        image_id = next(ids)
        added = active.add([image_id], random_codes(1, 64), "d", model_version="m1", change=next(changes))
        (accepted if added else refused).append(image_id)

    def rebuild_and_swap() -> None:
        if active.current is new or len(accepted) < 20:  # let some writes land on the old pair first
            time.sleep(0.001)
            return

        def catch_up(incoming: ServingPair) -> None:  # changes made while building, re-encoded
            incoming.index.upsert([10**9], random_codes(1, 128, seed=4), "d", change=next(changes))

        replaced.append(active.swap(new, catch_up=catch_up))

    def swapped_and_seen() -> bool:  # both sides of the swap searched and written
        return models == {"m1", "m2"} and bool(accepted) and bool(refused)

    errors = run_threads([search, search, write, rebuild_and_swap], seconds=1.0, until=swapped_and_seen)
    assert not errors, errors[:3]
    assert active.current is new and len(new.index) == 3001  # nothing of m1 leaked into m2's index
    assert models == {"m1", "m2"}
    assert accepted and refused  # writes happened on both sides of the swap
    assert len(replaced[0].index) == 2000 + len(accepted)  # every accepted write went into the old pair's index
    assert active.remove([10**9], change=next(changes)) == 1 and len(new.index) == 3000
