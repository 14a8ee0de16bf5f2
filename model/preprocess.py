"""The one image preprocessing of metah (CONTRACT §3), shared by training, evaluation and the service.

decode → convert to RGB → resize the whole image to ``input_size`` with PIL's bilinear filter (no crop)
→ scale to ``[0, 1]``. Normalisation happens inside the networks, never here.

"Decode" means the picture as a viewer shows it: the EXIF orientation is applied (phone photos are stored
sideways with a rotation tag), the first frame of an animation is used, and 16-bit samples are scaled to 8 bits
(PIL's own conversion clips them, turning every 16-bit picture white).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from model.errors import DataError

DEFAULT_MAX_PIXELS = 64_000_000


def decode_image(
    source: Path | bytes,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Decode one image file or byte string and resize it for an encoder.

    Args:
        source: a file path or the encoded bytes.
        size: ``(H, W)`` of the encoder input.
        max_pixels: refuse images whose declared size exceeds this many pixels (decompression bombs).
        formats: PIL format names to try (e.g. ``("PNG", "JPEG")``); ``None`` tries every installed plugin.

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
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            resized = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.array(resized, dtype=np.uint8)  # a writable copy, safe for torch.from_numpy
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"not a readable image: {exc}") from exc


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
