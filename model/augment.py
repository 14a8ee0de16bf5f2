"""Random augmentation on the training device: geometric for digits, photo views (crop, flip, colour) for photos."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PhotoView:
    """The random choices of one :func:`photo_augment` view: crop box, flip, jitter factors, grey, drawing."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    grey: bool = False
    drawing: str | None = None  # "lines" or "cartoon"


def draw_photo_view(
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    jitter: float = 0.3,
    grey: float = 0.0,
    drawing: float = 0.0,
) -> PhotoView:
    """Draw one view's choices from ``generator`` (see :func:`photo_augment` for the arguments); the order of the
    draws is part of the cached views' identity (``model.features.AUGMENT_VERSION``)."""
    top, left, h, w = _crop_box(height, width, scale, generator)
    flip = float(torch.rand((), generator=generator)) < 0.5
    brightness, contrast, saturation = (_uniform(generator, 1 - jitter, 1 + jitter) for _ in range(3))
    greyed = grey > 0.0 and float(torch.rand((), generator=generator)) < grey
    drawn = None
    if drawing > 0.0 and float(torch.rand((), generator=generator)) < drawing:
        drawn = "lines" if float(torch.rand((), generator=generator)) < 0.5 else "cartoon"
    return PhotoView(top, left, h, w, flip, brightness, contrast, saturation, greyed, drawn)


def apply_photo_views(images: torch.Tensor, views: Sequence[PhotoView]) -> torch.Tensor:
    """Render one view per image as :func:`photo_augment` renders each: on a GPU the whole batch at once
    (:func:`render_views`: 6.3× faster for 128 views at 224×224 on an H200, equal within 2.4·10⁻⁷), on a CPU one
    image at a time, where each image's data stays in cache (together took 1.6× as long there); both measured in
    ``benchmarks/augment``.

    Shape:
        ``[N, 3, H, W]`` float in ``[0, 1]`` and ``N`` views → same.
    """
    if images.device.type == "cpu":
        return torch.cat([render_views(images[i : i + 1], [view]) for i, view in enumerate(views)])
    return render_views(images, views)


def render_views(images: torch.Tensor, views: Sequence[PhotoView]) -> torch.Tensor:
    """Render one view per image at once: each crop resized (and flipped) on its own, then brightness, contrast,
    saturation and clamp for the whole batch (a dozen operations per batch rather than per image); greyscale and
    drawings per image.

    Shape:
        ``[N, 3, H, W]`` float in ``[0, 1]`` and ``N`` views → same.
    """
    n, _, height, width = images.shape
    out = torch.empty_like(images)
    for i, view in enumerate(views):
        crop = images[i : i + 1, :, view.top : view.top + view.height, view.left : view.left + view.width]
        resized = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        out[i : i + 1] = resized.flip(-1) if view.flip else resized

    def factor(name: str) -> torch.Tensor:
        values = torch.tensor([getattr(view, name) for view in views], dtype=images.dtype)
        # one view: a CPU scalar, which a GPU operation reads without a copy to the device
        return values.view(()) if n == 1 else values.to(images.device).view(n, 1, 1, 1)

    out = out * factor("brightness")
    grey_level = _luminance(out).unsqueeze(1)
    mean = grey_level.mean(dim=(2, 3), keepdim=True)
    out = (out - mean) * factor("contrast") + mean
    out = grey_level + (out - grey_level) * factor("saturation")
    out = out.clamp_(0.0, 1.0)
    for i, view in enumerate(views):
        if view.grey:
            out[i] = _luminance(out[i]).expand(3, -1, -1)
        if view.drawing is not None:
            out[i] = line_drawing(out[i]) if view.drawing == "lines" else flat_cartoon(out[i])
    return out


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
    view = draw_photo_view(height, width, generator, scale=scale, jitter=jitter, grey=grey, drawing=drawing)
    return render_views(image.unsqueeze(0), [view]).squeeze(0)


def _luminance(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB images, channels in dimension −3: ``[..., 3, H, W]`` → ``[..., H, W]``."""
    red, green, blue = image.unbind(-3)
    return 0.299 * red + 0.587 * green + 0.114 * blue


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
