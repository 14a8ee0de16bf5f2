"""Photo augmentation: a seeded view repeats exactly (the feature cache relies on it) and stays an image."""

from __future__ import annotations

from pathlib import Path

import torch

from model.augment import apply_photo_views, draw_photo_view, flat_cartoon, line_drawing, photo_augment, render_views
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


def test_drawn_views_redraw_the_same_crop_as_line_art_or_a_cartoon() -> None:
    photo = torch.from_numpy(decode_image(PHOTO.read_bytes(), (96, 96))).permute(2, 0, 1).float().div(255.0)
    kinds = set()
    for seed in range(8):
        colour = photo_augment(photo, torch.Generator().manual_seed(seed))
        drawn = photo_augment(photo, torch.Generator().manual_seed(seed), drawing=1.0)
        assert drawn.shape == photo.shape
        assert float(drawn.min()) >= 0.0 and float(drawn.max()) <= 1.0
        if torch.equal(drawn, line_drawing(colour)):
            kinds.add("lines")
        elif torch.equal(drawn, flat_cartoon(colour)):
            kinds.add("cartoon")
        else:
            raise AssertionError(f"seed {seed}: the drawn view is not a drawing of the colour view")
        assert torch.equal(photo_augment(photo, torch.Generator().manual_seed(seed), drawing=0.0), colour)
    assert kinds == {"lines", "cartoon"}  # both styles are drawn


def test_line_art_is_dark_on_edges_and_white_elsewhere() -> None:
    square = torch.full((3, 64, 64), 0.8)
    square[:, 16:48, 16:48] = 0.1  # a dark square on a light ground: four edges
    lines = line_drawing(square)
    assert torch.equal(lines[0], lines[1]) and torch.equal(lines[1], lines[2])  # grey
    assert float(lines[0, 32, 32]) > 0.95 and float(lines[0, 4, 4]) > 0.95  # flat areas stay white
    assert float(lines[0, 32, 16]) < 0.2  # the square's left edge is a dark line
    cartoon = flat_cartoon(square)
    assert float(cartoon[:, 32, 16].max()) == 0.0  # black outline on the edge
    assert torch.allclose(cartoon[:, 32, 32], torch.full((3,), 1 / 6))  # flat colour, quantised to sixths


def test_a_batch_rendered_at_once_equals_each_image_rendered_alone() -> None:
    photos = [
        torch.from_numpy(decode_image(path.read_bytes(), (96, 96))).permute(2, 0, 1).float().div(255.0)
        for path in sorted(PHOTO.parent.iterdir())[:6]
    ]
    images = torch.stack(photos)
    for options in ({}, {"grey": 0.5}, {"drawing": 0.5}, {"grey": 0.5, "drawing": 0.5}):
        alone = torch.stack(
            [photo_augment(p, torch.Generator().manual_seed(40 + i), **options) for i, p in enumerate(photos)]
        )
        views = [draw_photo_view(96, 96, torch.Generator().manual_seed(40 + i), **options) for i in range(6)]
        assert torch.equal(render_views(images, views), alone)  # the training path on a GPU
        assert torch.equal(apply_photo_views(images, views), alone)  # on a CPU: image by image
    assert {view.flip for view in views} == {True, False}  # both ways are exercised
    assert len({(view.top, view.left, view.height, view.width) for view in views}) == 6
