"""Save and load the shipped weights (safetensors) and their model card (JSON).

The card records everything needed to use the weights correctly (classes,
normalisation, input size, backbone) and the weights' sha256, which is checked
before a single tensor is read.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from skin_model import constants as C
from skin_model.data.config import DataConfig
from skin_model.model import backbones, serving
from skin_model.model.card import ExportedGraphs, MemberCard, ModelCard
from skin_model.model.files import (
    WeightsError,
    check_card,
    default_weights_dir,
    read_card,
    sha256,
    verified,
    write_card,
)
from skin_model.model.network import SkinLesionNet


def card_of(model: SkinLesionNet, card: ModelCard) -> ModelCard:
    """`card` with the fields the model itself fixes (backbone, data config, members)."""
    known = card.members
    members = tuple(replace(known[i], backbone=m.backbone, image_size=m.image_size, input_height=m.input_height)
                    if i < len(known) else MemberCard(m.backbone, m.image_size, input_height=m.input_height)
                    for i, m in enumerate(model.members))
    return replace(card, backbone=model.backbone, data_config=model.data_config,
                   members=members)


def _export(model: SkinLesionNet, directory: Path, weights_sha256: str) -> ExportedGraphs:
    """Write the served graphs of `model` (the weights whose sha256 is given) next to them."""
    files = (C.ONNX_PHOTO_FILE, C.ONNX_SEQUENCE_FILE, C.ONNX_HEATMAP_FILE)
    written = []
    for name, data in zip(files, serving.graphs(model)):
        if data is not None:
            (directory / name).write_bytes(data)
            written.append(name)
    digest = {name: sha256(directory / name) for name in written}
    heatmap = C.ONNX_HEATMAP_FILE if C.ONNX_HEATMAP_FILE in digest else None
    return ExportedGraphs(photo_file=files[0], photo_sha256=digest[files[0]], sequence_file=files[1],
                          sequence_sha256=digest[files[1]], weights_sha256=weights_sha256, opset=serving.OPSET,
                          heatmap_file=heatmap, heatmap_sha256=digest.get(C.ONNX_HEATMAP_FILE))


def save(model: SkinLesionNet, directory: str | Path, card: ModelCard, onnx: bool = True) -> ModelCard:
    """Write the weights, their ONNX Runtime graphs (unless `onnx` is False) and a card that records
    their checksums; returns that card. Graphs are exported on every save, so those served never
    lag behind the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / C.WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    digest = sha256(weights)
    for stale in (C.ONNX_PHOTO_FILE, C.ONNX_SEQUENCE_FILE, C.ONNX_HEATMAP_FILE):  # graphs of earlier weights must not stay behind
        (directory / stale).unlink(missing_ok=True)
    graphs = None
    if onnx:
        try:
            graphs = _export(model, directory, digest)
        except serving.NotExportable as exc:
            warnings.warn(f"{exc}; the torch engine will serve them", stacklevel=2)
    full = replace(card_of(model, card), weights_file=C.WEIGHTS_FILE, sha256=digest, size_bytes=weights.stat().st_size,
                   onnx=graphs)
    write_card(directory, full)
    return full


def export(directory: str | Path | None = None) -> ModelCard:
    """Export the verified weights in `directory` (default: the shipped ones) for ONNX Runtime and
    record the graphs in their card (`skin-model export`); the weights file is not rewritten."""
    directory = Path(directory) if directory is not None else default_weights_dir()
    model, card = load(directory)
    full = replace(card, onnx=_export(model, directory, str(card.sha256)))
    write_card(directory, full)
    return full


def build(card: ModelCard) -> SkinLesionNet:
    """An untrained network of the card's architecture (no ImageNet download: weights follow)."""
    return SkinLesionNet(backbone=card.backbone, image_size=card.image_size, pretrained=False,
                         members=tuple((m.backbone, m.data_config) for m in card.members), data_config=card.data_config)


def load(directory: str | Path | None = None, strict: bool = True) -> tuple[SkinLesionNet, ModelCard]:
    """Verified load: the checksum and the card's constants must match before use.

    `strict=False` accepts weights that predate the out-of-distribution statistics
    (only to refit them with `skin-model calibrate`)."""
    directory = Path(directory) if directory is not None else default_weights_dir()
    card = read_card(directory)
    weights = verified(directory / card.weights_file, card.sha256, "weights")
    check_card(card, tuple(backbones.REGISTRY))
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


__all__ = ["DataConfig", "ModelCard", "WeightsError", "build", "card_of", "default_weights_dir", "export", "load",
           "read_card", "save", "sha256"]
