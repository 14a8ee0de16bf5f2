"""Random geometric augmentation applied to whole training batches on the training device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    *,
    degrees: float = 10.0,
    scale: tuple[float, float] = (0.85, 1.15),
    translate: float = 0.1,
) -> torch.Tensor:
    """Rotate, scale and shift every image by its own random amount (torch's global RNG, so seeded runs repeat).

    Args:
        images: float32 ``[N, 3, H, W]`` in ``[0, 1]``.
        degrees: maximum absolute rotation.
        scale: range of the zoom factor (> 1 enlarges the content).
        translate: maximum shift as a fraction of the image size, in each direction.

    Shape:
        ``[N, 3, H, W]`` → same; borders are filled by repeating the edge pixels.
    """
    n = images.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + torch.rand(n) * (scale[1] - scale[0])
    shift = (torch.rand(n, 2) * 2 - 1) * translate * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(
        images.device, images.dtype
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
