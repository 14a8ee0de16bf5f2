"""Encoding in forward passes of the backbone's size, and re-encoding stored images
(:func:`service.pipeline.encode_stored`, used by activation and the follower)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from index import pack_codes
from model import backbones
from model.export import load_encoder
from model.preprocess import to_model_input
from service.pipeline import decode, encode, encode_stored, encode_upload
from service.storage import LocalBlobStore, blob_key, sha256_hex
from tests.service.conftest import MAX_PIXELS


def test_encode_stored_gives_each_image_its_upload_code_and_reports_the_unreadable(
    tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]
) -> None:
    store = LocalBlobStore(tmp_path)
    encoder = load_encoder(api_artefact)
    pngs = [png for png, _ in digit_pngs[:3]]
    keys = [store.put(png)[0] for png in pngs]
    truncated = store.put(pngs[0][:40])[0]
    missing = blob_key(sha256_hex(b"never stored"))
    images = [(1, keys[0]), (2, missing), (3, keys[1]), (4, truncated), (5, keys[2])]

    reencoded = encode_stored(store, encoder, images, MAX_PIXELS)

    assert reencoded.ids == [1, 3, 5]
    assert reencoded.codes.shape == (3, encoder.bits // 8) and reencoded.codes.dtype == np.uint8
    expected = np.stack([encode_upload(encoder, png, MAX_PIXELS) for png in pngs])
    assert np.array_equal(reencoded.codes, expected)
    assert [image_id for image_id, _ in reencoded.failed] == [2, 4]
    assert encode_stored(store, encoder, [(2, missing)], MAX_PIXELS).codes.shape == (0, encoder.bits // 8)


@pytest.mark.parametrize(("chunk", "passes"), [(3, [3, 3, 3, 1]), (1, [1] * 10), (64, [10])])
def test_encode_runs_the_backbones_pass_size_and_keeps_the_codes(
    api_artefact: Path,
    digit_pngs: list[tuple[bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    passes: list[int],
) -> None:
    """A batch is encoded in passes of ``CPU_PASS[backbone]`` images (EfficientNet-Lite0: one at a time);
    the codes are those of one pass over the whole batch."""
    encoder = load_encoder(api_artefact)
    pixels = np.stack([decode(encoder, png, MAX_PIXELS) for png, _ in digit_pngs[:10]])
    sizes: list[int] = []

    def counted(batch: torch.Tensor) -> Any:
        sizes.append(len(batch))
        return encoder.module(batch)

    monkeypatch.setitem(backbones.CPU_PASS, str(encoder.metadata["backbone"]), chunk)
    codes = encode(replace(encoder, module=counted), pixels)  # type: ignore[arg-type]
    assert sizes == passes
    with torch.inference_mode():
        whole = encoder.module(to_model_input(pixels)).numpy()
    assert np.array_equal(codes, pack_codes(whole, encoder.bits))
    assert encode(encoder, pixels[:0]).shape == (0, encoder.bits // 8)
