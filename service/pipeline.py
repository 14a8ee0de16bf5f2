"""Upload → code, as stages: :func:`probe` (sniff, size check) → ``decode_image`` → :func:`encode` → pack
(:func:`decode_upload` probes and decodes with one parse of the bytes, as a search does);
and stored image → code with another model (:func:`encode_stored`: activation, and the API's follower).

The only preprocessing is ``model.preprocess`` (CONTRACT §3); the only packing is ``index.pack_codes``.
Everything here is CPU work: call it off the event loop.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from index import pack_codes
from index.codes import Codes
from model.backbones import cpu_passes
from model.errors import DataError
from model.export import LoadedEncoder
from model.preprocess import decode_image, decode_opened, to_model_input
from service.errors import PayloadTooLargeError, UnprocessableError, UnsupportedMediaTypeError
from service.storage import BlobStore

# Raster formats accepted from clients. PIL is never asked to identify anything else (EPS and friends would
# hand the bytes to external programs).
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


@dataclass(frozen=True)
class ImageInfo:
    """What the bytes are, from their content (never from a file name or a client's Content-Type)."""

    media_type: str
    width: int
    height: int


@contextmanager
def opened_upload(data: bytes, max_pixels: int) -> Iterator[tuple[Image.Image, ImageInfo]]:
    """The upload opened once (header parsed, no pixel decoded) and what it is, its declared size checked.

    Raises:
        UnprocessableError: empty upload.
        UnsupportedMediaTypeError: not one of :data:`ACCEPTED_FORMATS`.
        PayloadTooLargeError: more than ``max_pixels`` pixels declared (decompression bomb).
    """
    if not data:
        raise UnprocessableError("the uploaded image is empty", code="empty_image")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"image dimensions are too large: {exc}", code="image_too_large") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        accepted = ", ".join(ACCEPTED_FORMATS)
        raise UnsupportedMediaTypeError(f"not an image in an accepted format ({accepted})") from exc
    with image:
        fmt, (width, height) = image.format or "", image.size
        if width < 1 or height < 1:
            raise UnprocessableError(f"image has no pixels ({width}x{height})", code="unreadable_image")
        if width * height > max_pixels:
            raise PayloadTooLargeError(
                f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels", code="image_too_large"
            )
        yield image, ImageInfo(Image.MIME.get(fmt, "application/octet-stream"), width, height)


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Identify an accepted image format from the header and check its declared size, decoding no pixel
    (errors: :func:`opened_upload`)."""
    with opened_upload(data, max_pixels) as (_, info):
        return info


def decode_upload(
    encoder: LoadedEncoder, data: bytes, max_pixels: int, check: Callable[[ImageInfo], None] | None = None
) -> np.ndarray:
    """:func:`probe` then :func:`decode` with one parse of the bytes: uint8 ``[H, W, 3]`` at the encoder's
    ``input_size``. ``check`` is called with what the header says before any pixel is decoded (it may raise).

    Raises:
        what :func:`opened_upload` raises; model.errors.DataError: the pixels do not decode → 422.
    """
    with opened_upload(data, max_pixels) as (image, info):
        if check is not None:
            check(info)
        return decode_opened(image, encoder.input_size)


def encode(encoder: LoadedEncoder, pixels: np.ndarray) -> Codes:
    """Encode decoded images and pack them, in forward passes of the backbone's fastest size on a CPU thread
    (:data:`model.backbones.CPU_PASS`): a job's batch of 64 photos is 64 passes of one image for
    EfficientNet-Lite0.

    Shape:
        pixels: uint8 ``[N, H, W, 3]`` at the encoder's ``input_size``.
        returns: packed ``uint8 [N, bits // 8]``.
    """
    passes = cpu_passes(str(encoder.metadata["backbone"]), len(pixels))
    with torch.inference_mode():
        outputs = [encoder.module(to_model_input(pixels[part])) for part in passes]
    values = torch.cat(outputs).numpy() if outputs else np.empty((0, encoder.bits), np.float32)
    return pack_codes(values, encoder.bits)


def decode(encoder: LoadedEncoder, data: bytes, max_pixels: int) -> np.ndarray:
    """One upload's pixels, uint8 ``[H, W, 3]`` at the encoder's ``input_size`` (bytes already probed).

    Raises:
        model.errors.DataError: the bytes do not decode (truncated, corrupt) → 422.
    """
    return decode_image(data, encoder.input_size, max_pixels)


def encode_upload(encoder: LoadedEncoder, data: bytes, max_pixels: int) -> Codes:
    """One upload's packed code ``uint8 [bits // 8]``: :func:`decode`, then :func:`encode` as a batch of one."""
    return encode(encoder, decode(encoder, data, max_pixels)[None])[0]


@dataclass(frozen=True)
class Reencoded:
    """Codes of stored images: ``codes[i]`` (packed, ``uint8 [bits // 8]``) is image ``ids[i]``'s; ``failed``
    holds ``(id, error)`` of the images whose bytes could not be read or decoded."""

    ids: list[int]
    codes: Codes
    failed: list[tuple[int, Exception]]


def encode_stored(
    store: BlobStore, encoder: LoadedEncoder, images: Sequence[tuple[int, str]], max_pixels: int
) -> Reencoded:
    """Re-encode stored images ``(id, blob key)`` with ``encoder``: read each blob → :func:`decode` →
    :func:`encode` as one batch. An unreadable image (missing blob, bytes that do not decode) is reported in
    ``failed``; a store that cannot be reached raises (``service.storage.BlobStoreError``) for the caller."""
    ids: list[int] = []
    pixels: list[np.ndarray] = []
    failed: list[tuple[int, Exception]] = []
    for image_id, key in images:
        try:
            pixels.append(decode(encoder, store.get(key), max_pixels))
            ids.append(image_id)
        except (OSError, ValueError, DataError) as exc:
            failed.append((image_id, exc))
    codes = encode(encoder, np.stack(pixels)) if pixels else np.empty((0, encoder.bits // 8), np.uint8)
    return Reencoded(ids, codes, failed)
