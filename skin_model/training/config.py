"""The training recipe's options: one dataclass that the CLI, ablation and the card share."""

from __future__ import annotations

from dataclasses import dataclass

from skin_model.constants import BACKBONE, IMAGE_SIZE
from skin_model.data.config import DataConfig

# How stage 1 may keep its epoch (`TrainConfig.select`, `stages.selection_score`).
SELECTIONS = ("balanced", "triage")


@dataclass
class TrainConfig:
    """The training recipe; the defaults are the CPU recipe of the shipped weights (bound it with
    `time_budget_min`: the learning-rate schedule then follows the clock).

    `cached_views` > 0 runs the frozen stem and first `freeze_blocks` blocks once, on that many augmented
    views of every training photo, and trains the rest of the network on their stored outputs.
    `progressive` is the share of stage 1 (by schedule progress) trained at `progressive_scale` of the
    input's height and width, the rest at full size. `logit_adjust` (tau) trains on the logits plus
    tau * log of the class frequencies the sampler draws (logit-adjusted loss, Menon et al. 2021):
    the rarer a class in the batches, the larger the margin its photos must win by. `distil_same_view`
    has the `teacher` label every augmented view the student trains on, instead of each photo's full
    frame once (`training/teacher.py`). `malignant_weight` adds that much of a malignant-versus-benign
    cross-entropy on the summed class probabilities (`stages.malignant_loss`), the score the triage
    flag thresholds. `select` is how stage 1 keeps its epoch on validation: "balanced" by balanced
    accuracy + macro AUC, "triage" by the malignant-versus-benign AUC the triage flag thresholds."""

    data: str | None = None
    out: str = "weights"
    backbone: str = BACKBONE
    image_size: int = IMAGE_SIZE
    input_height: int | None = None
    colour_constancy: str | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    freeze_blocks: int = 5
    label_smoothing: float = 0.1
    sampling_power: float = 0.5
    mixup: float = 0.0
    ema: float = 0.998
    views: int = 2
    cached_views: int = 0
    progressive: float = 0.0
    progressive_scale: float = 0.7
    logit_adjust: float = 0.0
    malignant_weight: float = 0.0
    sequence_steps: int = 2000
    seed: int = 0
    limit: int | None = None
    device: str | None = None
    time_budget_min: float | None = None
    heatmap_photos: int = 200
    init: str | None = None
    channels_last: bool = True
    cpu_bf16: bool = False
    split_seed: int | None = None
    teacher: str | None = None
    distil_weight: float = 0.5
    distil_same_view: bool = False
    fit_trust: bool = True
    select: str = "balanced"

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        _ = self.data_config  # the input's own checks (ConfigError, a ValueError) before any photo is read

    @property
    def data_config(self) -> DataConfig:
        """The input the recipe trains at: `image_size` wide, `input_height` high (square when not given),
        colour-normalised as `colour_constancy` says (None: as the camera took it)."""
        return DataConfig(image_size=self.image_size, input_height=self.input_height,
                          colour_constancy=self.colour_constancy)

    @property
    def split(self) -> int:
        """The seed of the lesion-grouped split (`--seed` unless `--split-seed` is given), so
        models of several seeds can share one split and be combined or distilled."""
        return self.seed if self.split_seed is None else self.split_seed


def split_description(seed: int) -> str:
    """How the card names the lesion-grouped split (its seed is read back from this text)."""
    return f"lesion-grouped, stratified by dx, 70/15/15, seed {seed}"
