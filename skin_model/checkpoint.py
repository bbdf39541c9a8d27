"""Save and load the shipped weights (safetensors) and their model card (JSON).

The card records everything needed to use the weights correctly (classes,
normalisation, input size, backbone) and the weights' sha256, which is checked
before a single tensor is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from . import constants as C
from .model import SkinLesionNet

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsError(RuntimeError):
    """The weights are missing, altered or do not match this code."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-lite3",
             "efficientnet-lite4")


def card_constants() -> dict[str, Any]:
    """The constants a model card must carry and a predictor must agree with.

    Backbone and input size are the training defaults here; a card may name others
    (they travel with the weights and the predictor follows them)."""
    return {
        "classes": list(C.CLASSES),
        "class_names": dict(C.CLASS_NAMES),
        "malignant": sorted(C.MALIGNANT),
        "mean": list(C.MEAN),
        "std": list(C.STD),
        "image_size": C.IMAGE_SIZE,
        "backbone": C.BACKBONE,
        "max_sequence": C.MAX_SEQUENCE,
        "meta_dim": C.META_DIM,
    }


def save(model: SkinLesionNet, directory: str | Path, card: dict[str, Any]) -> Path:
    """Write the weights and a card that records their checksum."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / C.WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    known = card.get("members") or []
    members = [{**(known[i] if i < len(known) else {}), "backbone": m.backbone, "image_size": m.image_size}
               for i, m in enumerate(model.members)]
    full = {**card, **card_constants(), "backbone": model.backbone, "image_size": model.image_size, "members": members,
            "weights_file": C.WEIGHTS_FILE, "sha256": sha256(weights),
            "size_bytes": weights.stat().st_size}
    (directory / C.CARD_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return weights


def read_card(directory: str | Path | None = None) -> dict[str, Any]:
    directory = Path(directory) if directory is not None else DEFAULT_WEIGHTS_DIR
    path = directory / C.CARD_FILE
    if not path.is_file():
        raise WeightsError(f"model card not found: {path}")
    return json.loads(path.read_text())


def load(directory: str | Path | None = None, strict: bool = True) -> tuple[SkinLesionNet, dict[str, Any]]:
    """Verified load: the checksum and the card's constants must match before use.

    `strict=False` accepts weights that predate the out-of-distribution statistics
    (only to refit them with `skin-model calibrate`)."""
    directory = Path(directory) if directory is not None else DEFAULT_WEIGHTS_DIR
    card = read_card(directory)
    weights = directory / card.get("weights_file", C.WEIGHTS_FILE)
    if not weights.is_file():
        raise WeightsError(f"weights file not found: {weights}")
    actual = sha256(weights)
    if actual != card.get("sha256"):
        raise WeightsError(
            f"checksum mismatch for {weights.name}: the model card expects {card.get('sha256')}, "
            f"the file has {actual}; refusing to load altered weights"
        )
    expected = card_constants()
    differing = [k for k, v in expected.items() if k not in ("backbone", "image_size") and card.get(k) != v]
    members = card.get("members") or []
    for where, entry in [("", card), *((f"members[{i}].", m) for i, m in enumerate(members))]:
        size = entry.get("image_size") if isinstance(entry, dict) else None
        if not isinstance(size, int) or not 32 <= size <= 1024:
            differing.append(where + "image_size")
        if not isinstance(entry, dict) or entry.get("backbone") not in BACKBONES:
            differing.append(where + "backbone")
    if differing:
        raise WeightsError(f"model card disagrees with this code on: {', '.join(differing)}")
    model = SkinLesionNet(backbone=card["backbone"], image_size=card["image_size"], pretrained=False,
                          members=tuple((m["backbone"], m["image_size"]) for m in members))
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    # Weights from before the sequence pooling and the confidence map were fitted use their defaults
    # (full LSTM correction, plain mean; confidence as the temperature leaves it).
    fitted_later = {"sequence_mix", "sequence_sharpness", "photo_confidence"}
    allowed = {"ood_means", "ood_precision", *fitted_later} if not strict else fitted_later
    if unexpected or set(missing) - allowed:
        raise WeightsError(f"weights do not fit this model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.eval()
    return model, card

