"""The searches' encodes batched across concurrent callers (:mod:`service.batching`), on the test encoder with a
gate in front of its network so that callers can be queued behind a running pass."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import backbones
from model.export import LoadedEncoder, load_encoder
from service.batching import EncodeBatcher
from service.limits import CpuSlots
from service.pipeline import decode, encode
from tests.service.conftest import MAX_PIXELS, wait_for

TIMEOUT_S = 30


class GatedNetwork:
    """The encoder's network, recording each pass's size; passes wait for ``gate`` while it is closed, and
    ``raise_next`` makes the next pass fail."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.gate = threading.Event()
        self.sizes: list[int] = []
        self.inside = 0
        self.most_inside = 0
        self.raise_next = False
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> Any:
        with self._lock:
            self.sizes.append(len(batch))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            fail, self.raise_next = self.raise_next, False
        try:
            assert self.gate.wait(timeout=30), "the test never opened the gate"
            if fail:
                raise RuntimeError("the network failed")
            return self.module(batch)
        finally:
            with self._lock:
                self.inside -= 1


@pytest.fixture
def encoder(api_artefact: Path) -> LoadedEncoder:
    return load_encoder(api_artefact)


@pytest.fixture
def pixels(encoder: LoadedEncoder, digit_pngs: list[tuple[bytes, str]]) -> list[np.ndarray]:
    return [decode(encoder, png, MAX_PIXELS) for png, _ in digit_pngs[:7]]


def gated(encoder: LoadedEncoder) -> tuple[LoadedEncoder, GatedNetwork]:
    network = GatedNetwork(encoder.module)
    return replace(encoder, module=network), network  # type: ignore[arg-type]


@dataclass
class Rig:
    """A gated copy of the encoder, its network, and a batcher on two CPU slots that records its passes' sizes."""

    encoder: LoadedEncoder
    network: GatedNetwork
    batcher: EncodeBatcher
    observed: list[int]


def rig(encoder: LoadedEncoder) -> Rig:
    observed: list[int] = []
    return Rig(*gated(encoder), EncodeBatcher(CpuSlots(2, 8), observed.append), observed)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, TIMEOUT_S, f"timed out waiting for {what}", poll_s=0.005)


def encode_queued(
    batcher: EncodeBatcher,
    encoders: list[LoadedEncoder],
    pixels: list[np.ndarray],
    first: GatedNetwork,
    *,
    fail_second: bool = False,
) -> list[Future[np.ndarray]]:
    """One caller per image, in order: the first one's pass waits at ``first``'s gate while the others queue
    behind it, each before the next one starts; then the gate opens (the next pass of ``first`` fails with
    ``fail_second``). The callers' futures, all done."""
    with ThreadPoolExecutor(len(pixels)) as pool:
        futures = [pool.submit(batcher.encode, encoders[0], pixels[0])]
        wait_until(lambda: first.sizes == [1], "the first pass")
        for encoder, image in zip(encoders[1:], pixels[1:], strict=True):
            futures.append(pool.submit(batcher.encode, encoder, image))
            wait_until(lambda: batcher.waiting == len(futures) - 1, f"caller {len(futures) - 1} to queue")
        first.raise_next = fail_second
        first.gate.set()
    return futures


def test_callers_that_queue_behind_a_pass_share_the_next_one_and_get_their_own_codes(
    encoder: LoadedEncoder, pixels: list[np.ndarray]
) -> None:
    r = rig(encoder)
    codes = [future.result() for future in encode_queued(r.batcher, [r.encoder] * len(pixels), pixels, r.network)]
    assert r.network.sizes == r.observed == [1, len(pixels) - 1]  # a backbone that batches: one pass at a time
    assert r.network.most_inside == 1
    expected = encode(encoder, np.stack(pixels))
    assert np.array_equal(np.stack(codes), expected)  # each caller its own image's code


def test_a_pass_takes_at_most_the_backbones_pass_size(
    encoder: LoadedEncoder, pixels: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(backbones.CPU_PASS, str(encoder.metadata["backbone"]), 2)
    r = rig(encoder)
    codes = [future.result() for future in encode_queued(r.batcher, [r.encoder] * len(pixels), pixels, r.network)]
    assert r.network.sizes == r.observed == [1, 2, 2, 2]
    assert np.array_equal(np.stack(codes), encode(encoder, np.stack(pixels)))


def test_a_backbone_of_one_image_per_pass_runs_a_pass_per_cpu_slot_at_once(
    encoder: LoadedEncoder, pixels: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EfficientNet-Lite0's pass size is 1: batching must not serialise its passes onto one core."""
    monkeypatch.setitem(backbones.CPU_PASS, str(encoder.metadata["backbone"]), 1)
    r = rig(encoder)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(r.batcher.encode, r.encoder, image) for image in pixels[:4]]
        wait_until(lambda: r.network.inside == 2 and r.batcher.waiting == 2, "two passes at once, two queued")
        r.network.gate.set()
        codes = [future.result(timeout=30) for future in futures]
    assert r.network.sizes == [1, 1, 1, 1] and r.network.most_inside == 2
    assert np.array_equal(np.stack(codes), encode(encoder, np.stack(pixels[:4])))


def test_a_failed_pass_raises_in_each_of_its_callers_and_the_next_pass_works(
    encoder: LoadedEncoder, pixels: list[np.ndarray]
) -> None:
    r = rig(encoder)
    futures = encode_queued(r.batcher, [r.encoder] * 3, pixels[:3], r.network, fail_second=True)
    first = futures[0].result()
    for future in futures[1:]:  # the pass the two queued callers shared (not observed)
        with pytest.raises(RuntimeError, match="the network failed"):
            future.result()
    assert r.network.sizes == [1, 2]
    assert np.array_equal(first, encode(encoder, pixels[0][None])[0])
    assert np.array_equal(r.batcher.encode(r.encoder, pixels[1]), encode(encoder, pixels[1][None])[0])
    assert r.batcher.waiting == 0 and r.observed == [1, 1]


def test_a_pass_never_mixes_two_models(encoder: LoadedEncoder, pixels: list[np.ndarray]) -> None:
    """During a model swap, searches of the old and the new model wait together: each pass is one model's."""
    old = rig(encoder)
    new, new_network = gated(encoder)
    new_network.gate.set()
    encoders = [old.encoder, new, old.encoder, new, old.encoder]
    codes = [future.result() for future in encode_queued(old.batcher, encoders, pixels[:5], old.network)]
    assert old.network.sizes == [1, 2] and new_network.sizes == [2] and old.observed == [1, 2, 2]
    assert np.array_equal(np.stack(codes), encode(encoder, np.stack(pixels[:5])))
