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


def test_greyscale_views_are_grey_and_leave_the_other_choices_alone() -> None:
    photo = torch.from_numpy(decode_image(PHOTO.read_bytes(), (96, 96))).permute(2, 0, 1).float().div(255.0)
    colour = photo_augment(photo, torch.Generator().manual_seed(7))
    grey = photo_augment(photo, torch.Generator().manual_seed(7), grey=1.0)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert not torch.equal(colour[0], colour[1])
    # the same crop, flip and jitter: greyscale of the colour view, up to rounding
    expected = (0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]).clamp(0.0, 1.0)
    torch.testing.assert_close(grey[0], expected, rtol=0, atol=1e-5)
    never = photo_augment(photo, torch.Generator().manual_seed(7), grey=0.0)
    assert torch.equal(never, colour)
