"""The one image preprocessing of metah (CONTRACT §3), shared by training, evaluation and the service.

decode → convert to RGB → resize the whole image to ``input_size`` with PIL's bilinear filter (no crop)
→ scale to ``[0, 1]``. Normalisation happens inside the networks, never here.

"Decode" means the picture as a viewer shows it: the EXIF orientation is applied (phone photos are stored
sideways with a rotation tag), the first frame of an animation is used, and 16-bit samples are scaled to 8 bits
(PIL's own conversion clips them, turning every 16-bit picture white).

A large JPEG is decoded at a reduced DCT scale (libjpeg's 1/2, 1/4 or 1/8, PIL's "draft" mode) when the decoded
picture still has at least twice the input size on both sides (:func:`draft_scale`): a 12-megapixel photo for a
224×224 encoder is decoded at 1/4 scale in a fraction of the time, and the bilinear resize that follows averages
the dropped detail away anyway. Every caller gets this through :func:`decode_image` (training, evaluation,
ingestion, search), so all of them see the same pixels (CONTRACT §3).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from model.errors import DataError

DEFAULT_MAX_PIXELS = 64_000_000

# CONTRACT §3: a reduced-scale decode keeps at least this many times ``input_size`` on both sides.
DRAFT_MARGIN = 2
_DCT_SCALES = (8, 4, 2)  # libjpeg's reductions tried, largest first
_EXIF_ORIENTATION = 0x0112
# EXIF orientations that ImageOps.exif_transpose turns by 90° (transpose, 270°, transverse, 90°): width and
# height of the stored picture are the displayed height and width.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def decode_image(
    source: Path | bytes,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
    *,
    draft: bool = True,
) -> np.ndarray:
    """Decode one image file or byte string and resize it for an encoder.

    Args:
        source: a file path or the encoded bytes.
        size: ``(H, W)`` of the encoder input.
        max_pixels: refuse images whose declared size exceeds this many pixels (decompression bombs).
        formats: PIL format names to try (e.g. ``("PNG", "JPEG")``); ``None`` tries every installed plugin.
        draft: decode large JPEGs at a reduced DCT scale (:func:`draft_scale`). ``False`` only to measure or
            test the full-scale decode: every metah caller leaves it on, so that training, evaluation and the
            service see the same pixels (CONTRACT §3).

    Returns:
        uint8 ``[H, W, 3]`` RGB.

    Raises:
        DataError: when the input is not a decodable image or is too large.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream, formats=formats) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
            return decode_opened(image, size, draft=draft)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"not a readable image: {exc}") from exc


def decode_opened(image: Image.Image, size: tuple[int, int], *, draft: bool = True) -> np.ndarray:
    """The pixels of an image already opened (not yet loaded) by the caller, as :func:`decode_image` gives them.

    For a caller that inspects the opened file first (its format, its declared size) and must not parse the
    bytes twice. The caller checks the size against its limit; ``draft`` as in :func:`decode_image`.

    Returns:
        uint8 ``[H, W, 3]`` RGB.

    Raises:
        DataError: the pixels do not decode (truncated, corrupt).
    """
    try:
        box = _reduce_jpeg(image, size) if draft else None
        rgb = _to_rgb(ImageOps.exif_transpose(image))
        resized = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
        return np.array(resized, dtype=np.uint8)  # a writable copy, safe for torch.from_numpy
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"not a readable image: {exc}") from exc


def draft_scale(stored_size: tuple[int, int], size: tuple[int, int], orientation: int = 1) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) :func:`decode_image` decodes a JPEG at.

    The largest of 8, 4 and 2 that fits each stored side at least that many times over :data:`DRAFT_MARGIN`
    times the input side it becomes once the EXIF orientation is applied (PIL's ``JpegImageFile.draft`` rule for
    the size :func:`_draft_request` asks for), else 1: a full-scale decode. The decoded picture,
    ``ceil(stored / scale)`` pixels a side, so keeps at least twice ``size`` on both sides as shown.

    Args:
        stored_size: ``(width, height)`` as stored in the file (PIL's ``Image.size``, before the orientation).
        size: ``(H, W)`` of the encoder input, as the picture is displayed.
        orientation: the EXIF orientation tag (5 to 8 swap width and height for display).
    """
    request = _draft_request(size, orientation)
    fits = min(stored_size[0] // request[0], stored_size[1] // request[1])
    return next((scale for scale in _DCT_SCALES if fits >= scale), 1)


def _draft_request(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The smallest decoded ``(width, height)`` allowed, in the stored (not yet rotated) orientation."""
    height, width = size
    if orientation in _TRANSPOSING_ORIENTATIONS:
        height, width = width, height
    return DRAFT_MARGIN * max(width, 1), DRAFT_MARGIN * max(height, 1)


def _reduce_jpeg(image: Image.Image, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Set a JPEG that is not loaded yet to decode at :func:`draft_scale`; returns the resize box, or ``None``.

    libjpeg decodes ``ceil(side / scale)`` pixels a side, the last one partly made of the encoder's edge padding;
    the picture itself spans ``side / scale`` of them (PIL's draft box, as ``Image.thumbnail`` uses it). The box
    is that span once the EXIF orientation is applied; resizing only it keeps the result aligned with a
    full-scale decode. Other formats, and JPEGs too small to reduce, are left untouched (``None``): they decode
    exactly as without draft.
    """
    if not isinstance(image, JpegImageFile):
        return None
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if draft_scale(image.size, size, orientation) == 1:
        return None
    drafted = image.draft(image.mode, _draft_request(size, orientation))
    if drafted is None:  # PIL declined (not a single tile): a full-scale decode
        return None
    _, (_, _, right, bottom) = drafted
    move = _SHOWN_POINT.get(orientation, _SHOWN_POINT[1])
    (x0, y0), (x1, y1) = (move(x, y, *image.size) for x, y in ((0.0, 0.0), (right, bottom)))
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


# Where ImageOps.exif_transpose takes the point (x, y) of a stored width × height picture, per EXIF orientation.
_SHOWN_POINT: dict[int, Callable[[float, float, float, float], tuple[float, float]]] = {
    1: lambda x, y, width, height: (x, y),
    2: lambda x, y, width, height: (width - x, y),  # FLIP_LEFT_RIGHT
    3: lambda x, y, width, height: (width - x, height - y),  # ROTATE_180
    4: lambda x, y, width, height: (x, height - y),  # FLIP_TOP_BOTTOM
    5: lambda x, y, width, height: (y, x),  # TRANSPOSE
    6: lambda x, y, width, height: (height - y, x),  # ROTATE_270
    7: lambda x, y, width, height: (height - y, width - x),  # TRANSVERSE
    8: lambda x, y, width, height: (y, width - x),  # ROTATE_90
}


# Integer modes PIL gives 16-bit PNG/TIFF samples (``I`` is also how it widens them).
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8-bit samples; 16-bit greyscale is scaled (``>> 8``) rather than clipped."""
    if image.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn a batch of decoded images into network input.

    Shape:
        images: uint8 ``[N, H, W, 3]`` (numpy, as from :func:`decode_image`) or ``[N, 3, H, W]`` (torch).
        returns: float32 ``[N, 3, H, W]`` in ``[0, 1]``.
    """
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    return tensor.float().div_(255.0).contiguous()
