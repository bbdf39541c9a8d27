"""Image transforms for training and inference, in one place.

Inference resizes the whole photo to a square so no part of the lesion is cut
away; training crops, zooms, rotates and recolours so that the model holds up on
photos framed differently from HAM10000 (tighter, zoomed, other cameras).
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from .constants import IMAGE_SIZE, MEAN, STD


def eval_transform(size: int = IMAGE_SIZE) -> v2.Compose:
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((size, size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def train_transform(size: int = IMAGE_SIZE) -> v2.Compose:
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomApply([v2.RandomRotation(180, interpolation=v2.InterpolationMode.BILINEAR)], p=0.5),
        v2.RandomResizedCrop((size, size), scale=(0.25, 1.0), ratio=(0.75, 4 / 3), antialias=True),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def centre_crop(img: Image.Image, fraction: float) -> Image.Image:
    """The central square covering `fraction` of the shorter side: a tighter, zoomed-in framing."""
    w, h = img.size
    side = max(1, int(round(min(w, h) * fraction)))
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def to_batch(images: list[Image.Image], size: int = IMAGE_SIZE) -> torch.Tensor:
    """Stack PIL images into a normalised (N, 3, size, size) tensor."""
    transform = eval_transform(size)
    return torch.stack([transform(img) for img in images])
