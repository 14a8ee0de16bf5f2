"""The one preprocessing (CONTRACT §3): decoded as a viewer shows the picture, then resized to the input size.

Large JPEGs are decoded at a reduced DCT scale (draft) that keeps at least twice the input size on both sides."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from model import preprocess
from model.errors import DataError
from model.preprocess import decode_image, draft_scale

SIZE = (32, 32)
GRADIENT = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_sixteen_bit_samples_are_scaled_not_clipped() -> None:
    eight = decode_image(encoded(Image.fromarray(GRADIENT)), SIZE)
    sixteen = decode_image(encoded(Image.fromarray(GRADIENT.astype(np.uint16) * 257)), SIZE)
    assert np.array_equal(eight, sixteen)


def test_the_exif_orientation_is_applied() -> None:
    upright = Image.fromarray(GRADIENT)
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = sideways.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    assert np.array_equal(
        decode_image(encoded(sideways, exif=exif.tobytes()), SIZE), decode_image(encoded(upright), SIZE)
    )


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "F"])
def test_every_mode_becomes_rgb_uint8(mode: str) -> None:
    image = Image.fromarray(GRADIENT).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
    pixels = decode_image(encoded(image, fmt), SIZE)
    assert pixels.shape == (*SIZE, 3) and pixels.dtype == np.uint8


def test_the_first_frame_of_an_animation_is_used() -> None:
    frames = [Image.fromarray(GRADIENT), Image.fromarray(255 - GRADIENT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert np.array_equal(decode_image(buffer.getvalue(), SIZE), decode_image(encoded(frames[0], "GIF"), SIZE))


@pytest.mark.parametrize("data", [b"", b"not an image", encoded(Image.fromarray(GRADIENT))[:60]])
def test_unreadable_bytes_are_a_data_error(data: bytes) -> None:
    with pytest.raises(DataError, match="not a readable image"):
        decode_image(data, SIZE)


def test_a_declared_size_over_the_limit_is_refused_before_decoding() -> None:
    with pytest.raises(DataError, match="exceeds the limit"):
        decode_image(encoded(Image.fromarray(GRADIENT)), SIZE, max_pixels=48 * 64 - 1)


# ------------------------------------------------------------------------------ JPEG draft (reduced DCT scale)

COFFEE = Path(__file__).resolve().parents[1] / "fixtures" / "coffee.png"
ORIENTATION = 0x0112
TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations shown turned by 90°


@pytest.fixture(scope="module")
def large_photo() -> Image.Image:
    """A real photo (the 270×180 coffee fixture) upscaled with Lanczos to 4000×3000, a camera-sized photo."""
    with Image.open(COFFEE) as image:
        return image.convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def odd_photo(large_photo: Image.Image) -> Image.Image:
    """4003×3005: no side a multiple of 8, so the last pixel of a reduced decode is partly the encoder's padding."""
    return large_photo.resize((4003, 3005), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def large_jpeg(large_photo: Image.Image) -> bytes:
    return encoded(large_photo, "JPEG", quality=90)


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records ``(width, height)`` of every decoded picture, after the EXIF orientation and before the resize."""
    sizes: list[tuple[int, int]] = []
    original = preprocess._to_rgb

    def spy(image: Image.Image) -> Image.Image:
        sizes.append(image.size)
        return original(image)

    monkeypatch.setattr(preprocess, "_to_rgb", spy)
    return sizes


def shown_size(stored: tuple[int, int], scale: int, orientation: int) -> tuple[int, int]:
    """``(width, height)`` of a JPEG decoded at ``1/scale`` (libjpeg rounds up), as displayed."""
    width, height = (math.ceil(side / scale) for side in stored)
    return (height, width) if orientation in TRANSPOSING else (width, height)


def full_scale_reference(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """CONTRACT §3 written out without draft: the pixels every decode gave before draft mode existed."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        return np.asarray(rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("stored", [(4032, 3024), (4000, 3000), (3024, 4032), (1000, 999), (896, 896), (640, 480)])
@pytest.mark.parametrize("size", [(224, 224), (260, 260), (250, 500), (500, 250), (32, 32), (7, 300)])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_draft_scale_keeps_twice_the_input_size_on_both_sides_and_reduces_as_far_as_that_allows(
    stored: tuple[int, int], size: tuple[int, int], orientation: int
) -> None:
    scale = draft_scale(stored, size, orientation)
    assert scale in (1, 2, 4, 8)
    if scale > 1:  # full scale is always allowed, even when the picture is smaller than twice the input
        width, height = shown_size(stored, scale, orientation)
        assert width >= 2 * size[1] and height >= 2 * size[0]
    if scale < 8:  # the next scale down would break the rule (as PIL decides it: whole multiples of the request)
        fits_width, fits_height = (stored[1], stored[0]) if orientation in TRANSPOSING else stored
        assert fits_width < 2 * scale * 2 * size[1] or fits_height < 2 * scale * 2 * size[0]


@pytest.mark.parametrize(
    ("stored", "size", "orientation", "scale"),
    [
        ((4032, 3024), (224, 224), 1, 4),  # a 12-megapixel photo for a 224×224 encoder: 1008×756
        ((4032, 3024), (32, 32), 1, 8),
        ((896, 896), (224, 224), 1, 2),  # exactly four times the input: 448×448
        ((895, 896), (224, 224), 1, 1),  # one pixel less: full scale
        ((4000, 3000), (250, 500), 1, 4),  # 1000×750 for 500 wide, 250 high
        ((4000, 3000), (250, 500), 6, 2),  # shown 3000 wide: 1/4 would leave 750 < 2×500
        ((4000, 3000), (250, 500), 3, 4),  # turned 180°: no swap
        ((4000, 3000), (500, 250), 8, 4),
    ],
)
def test_the_draft_scale_of_known_cases(
    stored: tuple[int, int], size: tuple[int, int], orientation: int, scale: int
) -> None:
    assert draft_scale(stored, size, orientation) == scale


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode(
    large_jpeg: bytes, decoded_sizes: list[tuple[int, int]]
) -> None:
    size = (224, 224)
    drafted = decode_image(large_jpeg, size)
    full = decode_image(large_jpeg, size, draft=False)
    assert decoded_sizes == [(1000, 750), (4000, 3000)]  # 1/4 scale, against the whole picture
    assert np.array_equal(full, full_scale_reference(large_jpeg, size))
    difference = np.abs(drafted.astype(np.int16) - full.astype(np.int16))
    # Measured: mean 0.14, max 2 (of 255). Bounds: a mean under half a grey level, no pixel off by more than 8.
    assert difference.mean() < 0.5 and difference.max() <= 8


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(250, 500), (500, 250), (260, 260)])
def test_a_rotated_or_non_square_jpeg_keeps_twice_the_input_size_on_both_sides_as_shown(
    odd_photo: Image.Image, decoded_sizes: list[tuple[int, int]], orientation: int, size: tuple[int, int]
) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encoded(odd_photo, "JPEG", quality=90, exif=exif.tobytes())
    pixels = decode_image(data, size)
    scale = draft_scale(odd_photo.size, size, orientation)
    assert scale > 1 and decoded_sizes == [shown_size(odd_photo.size, scale, orientation)]
    width, height = decoded_sizes[0]
    assert width >= 2 * size[1] and height >= 2 * size[0]
    # The same picture, turned the same way and not shifted by the padded last row or column (which the resize
    # leaves out): measured mean <= 0.2, max <= 3.
    difference = np.abs(pixels.astype(np.int16) - full_scale_reference(data, size).astype(np.int16))
    assert difference.mean() < 0.5 and difference.max() <= 6


def test_small_jpegs_and_other_formats_decode_exactly_as_before(
    large_photo: Image.Image, decoded_sizes: list[tuple[int, int]]
) -> None:
    size = (224, 224)
    small = large_photo.resize((895, 896), Image.Resampling.LANCZOS)  # just under four times the input
    exif = small.getexif()
    exif[ORIENTATION] = 6
    pictures = [
        encoded(small, "JPEG", quality=90),
        encoded(small, "JPEG", quality=90, exif=exif.tobytes()),
        encoded(large_photo.resize((640, 480)), "JPEG", quality=75),
        encoded(large_photo.resize((2000, 1500)), "PNG"),  # large, but not a JPEG
        encoded(large_photo.resize((2000, 1500)), "WEBP", quality=90),
    ]
    for data in pictures:
        assert np.array_equal(decode_image(data, size), full_scale_reference(data, size))
    assert decoded_sizes == [(895, 896), (896, 895), (640, 480), (2000, 1500), (2000, 1500)]


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs_are_reduced_too(
    large_photo: Image.Image, decoded_sizes: list[tuple[int, int]], mode: str
) -> None:
    data = encoded(large_photo.resize((2000, 1500)).convert(mode), "JPEG", quality=90)
    pixels = decode_image(data, SIZE)
    assert decoded_sizes == [(250, 188)]  # 1/8 scale, still over twice 32×32; the picture spans 187.5 rows
    # Measured: mean 0.13, max 3. Resizing all 188 rows instead (the half-padded last one as a whole row) shifts
    # the picture: max 8 (L) and 11 (CMYK).
    difference = np.abs(pixels.astype(np.int16) - full_scale_reference(data, SIZE).astype(np.int16))
    assert difference.mean() < 0.5 and difference.max() <= 6


def test_a_truncated_large_jpeg_is_still_a_data_error(large_jpeg: bytes) -> None:
    with pytest.raises(DataError, match="not a readable image"):
        decode_image(large_jpeg[: len(large_jpeg) // 2], (224, 224))


def test_the_pixel_limit_is_checked_on_the_declared_size_before_draft_or_decoding(
    large_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("decoding started before the pixel limit was checked")

    monkeypatch.setattr(JpegImageFile, "draft", refuse)
    monkeypatch.setattr(JpegImageFile, "load", refuse)
    with pytest.raises(DataError, match="image of 4000x3000 pixels exceeds the limit"):
        decode_image(large_jpeg, (224, 224), max_pixels=4000 * 3000 - 1)
