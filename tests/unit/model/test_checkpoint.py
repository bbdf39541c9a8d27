"""skin_model.model.checkpoint: verified save/load of the weights and their model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import STUB_BACKBONE

from skin_model import constants as C
from skin_model.constants import CARD_FILE, CLASSES, WEIGHTS_FILE
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard
from skin_model.model.checkpoint import WeightsError
from skin_model.model.network import SkinLesionNet


@pytest.fixture
def saved(tmp_path: Path, tiny_weights: Path) -> Path:
    """A private copy of the tiny weights, free to damage."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def _card(directory: Path) -> dict:
    return json.loads((directory / CARD_FILE).read_text())


def test_round_trip_gives_identical_outputs(tmp_path: Path, tiny_model: SkinLesionNet, lesion_photo) -> None:
    from skin_model.engine import preprocess

    with torch.no_grad():
        tiny_model.photo_temperature.fill_(1.7)
        tiny_model.sequence_bias.copy_(torch.linspace(-1, 1, len(CLASSES)))
    written = checkpoint.save(tiny_model, tmp_path / "out",
                              card=ModelCard(name="round trip", training={"extra": [1, 2]}))
    weights = tmp_path / "out" / WEIGHTS_FILE
    assert weights.is_file() and written.sha256 == checkpoint.sha256(weights)

    loaded, card = checkpoint.load(tmp_path / "out")
    assert not loaded.training
    assert card == written
    assert card.name == "round trip" and card.training["extra"] == [1, 2]
    x = preprocess([lesion_photo(), lesion_photo(centre=(0.3, 0.3), seed=1)])
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_model(x))
        for a, b in zip(loaded.forward_sequence(x), tiny_model.forward_sequence(x)):
            assert torch.equal(a, b)
    assert float(loaded.photo_temperature) == pytest.approx(1.7)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_card_records_checksum_and_constants(tiny_weights: Path) -> None:
    card = _card(tiny_weights)
    assert card["sha256"] == checkpoint.sha256(tiny_weights / WEIGHTS_FILE)
    assert card["size_bytes"] == (tiny_weights / WEIGHTS_FILE).stat().st_size
    assert card["weights_file"] == WEIGHTS_FILE
    constants = {"classes": list(C.CLASSES), "class_names": dict(C.CLASS_NAMES), "malignant": sorted(C.MALIGNANT),
                 "mean": list(C.MEAN), "std": list(C.STD), "image_size": C.IMAGE_SIZE, "interpolation": "bilinear",
                 "backbone": STUB_BACKBONE, "max_sequence": C.MAX_SEQUENCE, "meta_dim": C.META_DIM}
    for key, value in constants.items():
        assert card[key] == value, key
    read = checkpoint.read_card(tiny_weights)
    assert isinstance(read, ModelCard) and read.to_json() == card
    read.check(extra_backbones=(STUB_BACKBONE,))


def test_flipped_byte_is_refused(saved: Path) -> None:
    weights = saved / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum"):
        checkpoint.load(saved)


def test_card_with_other_classes_is_refused(saved: Path) -> None:
    card = _card(saved)
    card["classes"] = list(reversed(card["classes"]))
    (saved / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="disagrees with this code on: classes"):
        checkpoint.load(saved)


@pytest.mark.parametrize(("change", "message"), [
    ({"mean": [0.485, 0.456, 0.406]}, "disagrees with this code on: mean/std"),
    ({"std": [0.229, 0.224, 0.225]}, "disagrees with this code on: mean/std"),
    ({"backbone": "resnet50"}, "disagrees with this code on: backbone"),
    ({"image_size": "big"}, "cannot be read: image_size"),
])
def test_card_with_other_normalisation_or_unknown_backbone_is_refused(saved: Path, change: dict,
                                                                      message: str) -> None:
    (saved / CARD_FILE).write_text(json.dumps({**_card(saved), **change}))
    with pytest.raises(WeightsError, match=message):
        checkpoint.load(saved)


def test_card_disagreeing_on_several_constants_names_them_all(saved: Path) -> None:
    card = _card(saved)
    card["classes"] = list(reversed(card["classes"]))
    card["backbone"] = "resnet50"
    card["meta_dim"] = card["meta_dim"] + 1
    (saved / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="disagrees with this code on: classes, meta_dim, backbone"):
        checkpoint.load(saved)


def test_model_follows_the_cards_input_size(tmp_path: Path) -> None:
    model = SkinLesionNet(backbone=STUB_BACKBONE, pretrained=False, image_size=96).eval()
    checkpoint.save(model, tmp_path, ModelCard())
    assert _card(tmp_path)["image_size"] == 96
    loaded, card = checkpoint.load(tmp_path)
    assert card.image_size == loaded.image_size == 96


def test_missing_card(saved: Path) -> None:
    (saved / CARD_FILE).unlink()
    with pytest.raises(WeightsError, match="model card not found"):
        checkpoint.load(saved)


def test_missing_weights_file(saved: Path) -> None:
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(WeightsError, match="weights file not found"):
        checkpoint.load(saved)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="model card not found"):
        checkpoint.load(tmp_path / "nothing here")


def test_weights_error_is_a_runtime_error() -> None:
    # the CLI turns RuntimeError into a one-line message instead of a traceback
    assert issubclass(WeightsError, RuntimeError)


def test_weights_from_before_the_fitted_sequence_pooling_and_confidence_map_load_with_defaults(saved: Path) -> None:
    from safetensors.torch import load_file, save_file

    from skin_model.trust.calibration import confidence_grid

    weights = saved / WEIGHTS_FILE
    state = load_file(str(weights))
    for key in ("photo_confidence", "sequence_mix", "sequence_sharpness"):
        del state[key]
    save_file(state, str(weights))
    card = _card(saved)
    card["sha256"] = checkpoint.sha256(weights)
    (saved / CARD_FILE).write_text(json.dumps(card))
    model, _ = checkpoint.load(saved)
    assert torch.equal(model.photo_confidence, confidence_grid())  # probabilities as the temperature leaves them
    assert float(model.sequence_mix) == 1.0 and float(model.sequence_sharpness) == 0.0
    state["photo_bias_typo"] = state.pop("photo_bias")
    save_file(state, str(weights))
    card["sha256"] = checkpoint.sha256(weights)
    (saved / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not fit"):
        checkpoint.load(saved)
