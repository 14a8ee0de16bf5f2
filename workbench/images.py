"""Images as the API receives them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    """An image array (uint8 ``[H, W]`` or ``[H, W, 3]``) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
