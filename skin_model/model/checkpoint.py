"""Save and load the shipped weights (safetensors) and their model card (JSON).

The card records everything needed to use the weights correctly (classes,
normalisation, input size, backbone) and the weights' sha256, which is checked
before a single tensor is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from skin_model import constants as C
from skin_model.data.config import DataConfig
from skin_model.model import backbones
from skin_model.model.card import CardError, MemberCard, ModelCard
from skin_model.model.network import SkinLesionNet

REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


class WeightsError(RuntimeError):
    """The weights are missing, altered or do not match this code."""


def default_weights_dir() -> Path:
    """Where the shipped weights are: `SKIN_MODEL_WEIGHTS` if set, else the copy installed with
    the package (`skin_model/weights`, in a wheel), else the repository's `weights/` folder."""
    if os.environ.get("SKIN_MODEL_WEIGHTS"):
        return Path(os.environ["SKIN_MODEL_WEIGHTS"])
    installed = Path(__file__).resolve().parents[1] / "weights"
    return installed if (installed / C.CARD_FILE).is_file() else REPO_WEIGHTS_DIR


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_of(model: SkinLesionNet, card: ModelCard) -> ModelCard:
    """`card` with the fields the model itself fixes (backbone, data config, members)."""
    known = card.members
    members = tuple(replace(known[i], backbone=m.backbone, image_size=m.image_size) if i < len(known)
                    else MemberCard(m.backbone, m.image_size) for i, m in enumerate(model.members))
    return replace(card, backbone=model.backbone, data_config=model.data_config,
                   members=members)


def save(model: SkinLesionNet, directory: str | Path, card: ModelCard) -> ModelCard:
    """Write the weights and a card that records their checksum; returns that card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / C.WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    full = replace(card_of(model, card), weights_file=C.WEIGHTS_FILE, sha256=sha256(weights),
                   size_bytes=weights.stat().st_size)
    (directory / C.CARD_FILE).write_text(json.dumps(full.to_json(), indent=2, sort_keys=False) + "\n")
    return full


def read_card(directory: str | Path | None = None) -> ModelCard:
    directory = Path(directory) if directory is not None else default_weights_dir()
    path = directory / C.CARD_FILE
    if not path.is_file():
        raise WeightsError(f"model card not found: {path}")
    try:
        return ModelCard.from_json(json.loads(path.read_text()))
    except (CardError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: {exc}") from None


def build(card: ModelCard) -> SkinLesionNet:
    """An untrained network of the card's architecture (no ImageNet download: weights follow)."""
    return SkinLesionNet(backbone=card.backbone, image_size=card.image_size, pretrained=False,
                         members=tuple((m.backbone, m.image_size) for m in card.members), data_config=card.data_config)


def load(directory: str | Path | None = None, strict: bool = True) -> tuple[SkinLesionNet, ModelCard]:
    """Verified load: the checksum and the card's constants must match before use.

    `strict=False` accepts weights that predate the out-of-distribution statistics
    (only to refit them with `skin-model calibrate`)."""
    directory = Path(directory) if directory is not None else default_weights_dir()
    card = read_card(directory)
    weights = directory / card.weights_file
    if not weights.is_file():
        raise WeightsError(f"weights file not found: {weights}")
    actual = sha256(weights)
    if actual != card.sha256:
        raise WeightsError(
            f"checksum mismatch for {weights.name}: the model card expects {card.sha256}, "
            f"the file has {actual}; refusing to load altered weights"
        )
    if card.data_config.mean != C.MEAN or card.data_config.std != C.STD:
        raise WeightsError("model card disagrees with this code on: mean/std (the backbones' ImageNet normalisation)")
    try:
        card.check(extra_backbones=tuple(backbones.REGISTRY))
    except CardError as exc:
        raise WeightsError(str(exc)) from None
    model = build(card)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    # Weights from before the sequence pooling and the confidence map were fitted use their defaults
    # (full LSTM correction, plain mean; confidence as the temperature leaves it).
    # Weights from before the texture check have no texture statistics: the card then has no texture threshold.
    fitted_later = {"sequence_mix", "sequence_sharpness", "photo_confidence", "ood_texture_mean",
                    "ood_texture_precision"}
    allowed = {"ood_means", "ood_precision", *fitted_later} if not strict else fitted_later
    if unexpected or set(missing) - allowed:
        raise WeightsError(f"weights do not fit this model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.eval()
    return model, card


__all__ = ["DataConfig", "ModelCard", "WeightsError", "build", "card_of", "default_weights_dir", "load", "read_card",
           "save", "sha256"]
