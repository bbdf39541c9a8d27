"""Where the shipped weights are, their checksums, and their model card: torch-free, so the serving
engine (ONNX Runtime) and the app's model card page find and verify them without loading torch."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from skin_model import constants as C
from skin_model.model.card import CardError, ModelCard

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


def verified(path: Path, expected: str | None, what: str) -> Path:
    """`path` when it exists and its sha256 is the one the card records; else a WeightsError."""
    if not path.is_file():
        raise WeightsError(f"{what} file not found: {path}")
    actual = sha256(path)
    if actual != expected:
        raise WeightsError(f"checksum mismatch for {path.name}: the model card expects {expected}, "
                           f"the file has {actual}; refusing to load altered {what}")
    return path


def read_card(directory: str | Path | None = None) -> ModelCard:
    directory = Path(directory) if directory is not None else default_weights_dir()
    path = directory / C.CARD_FILE
    if not path.is_file():
        raise WeightsError(f"model card not found: {path}")
    try:
        return ModelCard.from_json(json.loads(path.read_text()))
    except (CardError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: {exc}") from None


def check_card(card: ModelCard, backbones: tuple[str, ...] = ()) -> None:
    """A WeightsError naming what the card disagrees with this code on (normalisation, classes,
    sequence length, context size, backbone names beside `backbones`)."""
    if card.data_config.mean != C.MEAN or card.data_config.std != C.STD:
        raise WeightsError("model card disagrees with this code on: mean/std (the backbones' ImageNet normalisation)")
    try:
        card.check(extra_backbones=backbones)
    except CardError as exc:
        raise WeightsError(str(exc)) from None


def write_card(directory: str | Path, card: ModelCard) -> None:
    (Path(directory) / C.CARD_FILE).write_text(json.dumps(card.to_json(), indent=2, sort_keys=False) + "\n")
