"""Combine separately trained weights into one ensemble: photo logits are averaged over
the members, so their errors partly cancel. The first folder's model keeps its LSTM,
patient-context head and out-of-distribution statistics; each further folder adds its
encoder and photo head. Calibration must then be refitted (`skin-model calibrate`),
because averaged logits have another scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from skin_model.model import checkpoint
from skin_model.model.card import MemberCard, ModelCard
from skin_model.model.network import SkinLesionNet


def _member_entry(card: ModelCard) -> MemberCard:
    return MemberCard(backbone=card.backbone, image_size=card.image_size, input_height=card.data_config.input_height,
                      source_sha256=card.sha256,
                      training={k: card.training.get(k) for k in ("hardware", "device", "seconds", "finished", "config")})


def combine(main: str | Path, others: Sequence[str | Path], out: str | Path) -> tuple[SkinLesionNet, ModelCard]:
    """Build the ensemble of the weights in `main` and `others` and write it (uncalibrated) to `out`."""
    if not others:
        raise ValueError("an ensemble needs at least one further weights folder")
    model, card = checkpoint.load(main, strict=False)
    loaded = [checkpoint.load(o, strict=False) for o in others]
    if model.members or any(m.members for m, _ in loaded):
        raise ValueError("combine single models, not ensembles")
    for folder, (_, other) in zip(others, loaded):
        if (other.data.split, other.data.metadata_md5) != (card.data.split, card.data.metadata_md5):
            raise ValueError(f"{folder} was trained on another split or data than {main}: its photos of the test "
                             "split would not be held out")
        if other.data_config.colour_constancy != card.data_config.colour_constancy:
            raise ValueError(f"{folder} normalises colour differently from {main}: members see the main model's "
                             "input, so they must share its colour normalisation")
    combined = SkinLesionNet(model.backbone, model.image_size, pretrained=False, data_config=model.data_config,
                             members=tuple((m.backbone, m.data_config) for m, _ in loaded))
    missing, unexpected = combined.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("members.") for k in missing)
    for member, (source, _) in zip(combined.members, loaded):
        member.encoder.load_state_dict(source.encoder.state_dict())
        member.photo_head.load_state_dict(source.photo_head.state_dict())
    combined.eval()
    entry = ModelCard(name=f"{card.name} + {len(loaded)} ensemble member(s) (not yet calibrated)",
                      architecture=card.architecture, training=card.training, data=card.data,
                      members=tuple(_member_entry(c) for _, c in loaded))
    return combined, checkpoint.save(combined, out, entry)
