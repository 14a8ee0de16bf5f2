"""Photo augmentation: a seeded view repeats exactly (the feature cache relies on it) and stays an image."""

from __future__ import annotations

from pathlib import Path

import torch

from model.augment import photo_augment
from model.preprocess import decode_image

PHOTO = sorted((Path(__file__).resolve().parents[2] / "data" / "pacs" / "photo" / "giraffe").iterdir())[0]


def test_a_seeded_view_repeats_and_stays_an_image() -> None:
    photo = torch.from_numpy(decode_image(PHOTO.read_bytes(), (96, 96))).permute(2, 0, 1).float().div(255.0)
    first = photo_augment(photo, torch.Generator().manual_seed(7))
    again = photo_augment(photo, torch.Generator().manual_seed(7))
    other = photo_augment(photo, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == photo.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert not torch.equal(first, photo)  # an augmentation, not the photo again
