"""The data config: how a photo becomes a network's input. Torch-free, so a model card can be
read (by the app's model card page, or a script) without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from skin_model.constants import IMAGE_SIZE, MEAN, STD

INTERPOLATIONS = ("bilinear", "bicubic")


class ConfigError(ValueError):
    """A data config that cannot describe this model's input."""


@dataclass(frozen=True)
class DataConfig:
    """How a photo becomes the network's input (timm's "pretrained config"); it travels in the
    model card, and `preprocess` is built from it."""

    image_size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be an integer from 32 to 1024, not {self.image_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std must hold three values each, std positive")
