"""The one preprocessing (CONTRACT §3): decoded as a viewer shows the picture, then resized to the input size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.errors import DataError
from model.preprocess import decode_image

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
