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


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _crop_box(height: int, width: int, scale: tuple[float, float], generator: torch.Generator) -> tuple[int, ...]:
    """torchvision's RandomResizedCrop box (aspect ratio 3/4–4/3), falling back to the whole image."""
    area = height * width
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        ratio = math.exp(_uniform(generator, math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    return 0, 0, height, width


def photo_augment(
    image: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    jitter: float = 0.3,
    grey: float = 0.0,
    drawing: float = 0.0,
) -> torch.Tensor:
    """Random resized crop, horizontal flip, colour jitter and (optionally) greyscale or a drawing of one photo,
    drawn from ``generator``.

    Args:
        image: float32 ``[3, H, W]`` in ``[0, 1]``.
        generator: the source of every random choice (a seeded generator repeats the same view).
        scale: range of the crop's share of the image area.
        jitter: brightness, contrast and saturation factors are drawn from ``[1 - jitter, 1 + jitter]``.
        grey: probability that the view is turned to greyscale (sketches and scans have no colour); at 0 no draw is
            made for it, so the other choices are the same as without the option.
        drawing: probability that the view is then redrawn as line art or, as often, as a flat-colour cartoon
            (:func:`line_drawing`, :func:`flat_cartoon`); drawn after every other choice, like ``grey``.

    Shape:
        ``[3, H, W]`` → same, values in ``[0, 1]``.
    """
    _, height, width = image.shape
    top, left, h, w = _crop_box(height, width, scale, generator)
    crop = image[:, top : top + h, left : left + w].unsqueeze(0)
    out = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False).squeeze(0)
    if float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-1)
    out = out * _uniform(generator, 1 - jitter, 1 + jitter)  # brightness
    grey_level = _luminance(out).unsqueeze(0)
    out = (out - grey_level.mean()) * _uniform(generator, 1 - jitter, 1 + jitter) + grey_level.mean()  # contrast
    out = grey_level + (out - grey_level) * _uniform(generator, 1 - jitter, 1 + jitter)  # saturation
    out = out.clamp_(0.0, 1.0)
    if grey > 0.0 and float(torch.rand((), generator=generator)) < grey:
        out = _luminance(out).expand(3, -1, -1).clone()
    if drawing > 0.0 and float(torch.rand((), generator=generator)) < drawing:
        out = line_drawing(out) if float(torch.rand((), generator=generator)) < 0.5 else flat_cartoon(out)
    return out


def _luminance(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of an RGB ``[3, H, W]`` image: ``[H, W]``."""
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def _blur(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[C, H, W]`` planes (separable, edges repeated)."""
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=planes.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).expand(planes.shape[0], 1, 1, -1)
    x = F.pad(planes.unsqueeze(0), (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel, groups=planes.shape[0])
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.transpose(2, 3), groups=planes.shape[0]).squeeze(0)


def _edge_strength(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the blurred luminance, ``[H, W]`` scaled so its 98th percentile is 1."""
    luminance = _blur(_luminance(image).unsqueeze(0), 1.0)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype).view(1, 1, 3, 3)
    padded = F.pad(luminance.unsqueeze(0), (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, sobel), F.conv2d(padded, sobel.transpose(2, 3))
    magnitude = (gx**2 + gy**2).sqrt()[0, 0]
    return magnitude / (torch.quantile(magnitude.flatten(), 0.98) + 1e-6)


def line_drawing(image: torch.Tensor) -> torch.Tensor:
    """Dark lines on white where the photo has edges: ``[3, H, W]`` in ``[0, 1]`` → same, grey."""
    return (1.0 - _edge_strength(image).clamp(0.0, 1.0)).expand(3, -1, -1).clone()


def flat_cartoon(image: torch.Tensor, levels: int = 6) -> torch.Tensor:
    """Smoothed colours quantised to ``levels`` per channel, with black outlines on the strong edges."""
    flat = (_blur(image, 2.0) * levels).round() / levels
    return (flat * (_edge_strength(image) < 0.4).to(image.dtype)).clamp(0.0, 1.0)
