"""The data config: how a photo becomes a network's input. Torch-free, so a model card can be
read (by the app's model card page, or a script) without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from skin_model.constants import IMAGE_SIZE, MEAN, STD

INTERPOLATIONS = ("bilinear", "bicubic")
# Per-photo colour normalisations a card may ask for before the input is normalised: "shades_of_gray" divides
# each channel by its power mean (p = SOG_POWER), so a photo's illuminant and camera white balance are undone.
COLOUR_CONSTANCY = ("shades_of_gray",)
SOG_POWER = 6


class ConfigError(ValueError):
    """A data config that cannot describe this model's input."""


@dataclass(frozen=True)
class DataConfig:
    """How a photo becomes the network's input (timm's "pretrained config"); it travels in the
    model card, and `preprocess` is built from it.

    `image_size` is the input's width, and its height too unless `input_height` is given: a
    non-square input keeps the photos' own aspect (HAM10000's 200x150) instead of squashing
    them into a square. Any photo is resized to `input_size` whole, nothing cut away.
    `colour_constancy` (None, or one of COLOUR_CONSTANCY) colour-normalises the resized photo first."""

    image_size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    interpolation: str = "bilinear"
    input_height: int | None = None
    colour_constancy: str | None = None
    # (height, width) of the network's input, set from the fields above (read on every photo's path)
    input_size: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be an integer from 32 to 1024, not {self.image_size!r}")
        if self.input_height is not None and (not isinstance(self.input_height, int)
                                              or not 32 <= self.input_height <= 1024):
            raise ConfigError(f"input_height must be an integer from 32 to 1024, not {self.input_height!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if self.colour_constancy is not None and self.colour_constancy not in COLOUR_CONSTANCY:
            raise ConfigError(f"colour_constancy must be one of {', '.join(COLOUR_CONSTANCY)} or absent, "
                              f"not {self.colour_constancy!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std must hold three values each, std positive")
        object.__setattr__(self, "input_size", (self.input_height or self.image_size, self.image_size))

    @property
    def encoder_size(self) -> int | tuple[int, int]:
        """What the encoder is built for: the side of a square input, else (height, width)."""
        height, width = self.input_size
        return width if height == width else (height, width)

    def describe(self) -> str:
        """'160 px' for a square input, '200x150 px' (width x height) otherwise."""
        height, width = self.input_size
        return f"{width} px" if height == width else f"{width}x{height} px"
