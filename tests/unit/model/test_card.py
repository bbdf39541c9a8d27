"""The typed model card: read, written, checked, and the source of the input transforms."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import REPO

from skin_model import constants as C
from skin_model.data.config import DataConfig
from skin_model.engine import preprocess
from skin_model.model import checkpoint
from skin_model.model.card import CardError, DatasetInfo, ModelCard, TrustSettings

SHIPPED = json.loads((REPO / "weights" / C.CARD_FILE).read_text())


def test_the_shipped_card_reads_into_types_and_writes_back_the_same_json() -> None:
    card = ModelCard.from_json(SHIPPED)
    assert card.data_config == DataConfig(image_size=SHIPPED["image_size"], mean=tuple(SHIPPED["mean"]),
                                          std=tuple(SHIPPED["std"]))
    assert card.trust.inconclusive_below == SHIPPED["inconclusive_below"] and card.trust.ood == SHIPPED["ood"]
    assert card.data.split_seed == 0 and card.data.metadata_md5 == SHIPPED["data"]["metadata_md5"]
    assert card.trust.triage is not None and card.trust.triage.threshold == SHIPPED["triage"]["threshold"]
    assert card.trust.triage.malignant == tuple(sorted(card.malignant))
    written = card.to_json()
    assert written == SHIPPED and written["interpolation"] == "bilinear"
    assert ModelCard.from_json(written) == card


@pytest.mark.parametrize(("change", "message"), [
    ({"image_size": "160"}, "image_size"),
    ({"image_size": 8}, "image_size"),
    ({"interpolation": "nearest"}, "interpolation"),
    ({"colour_constancy": "grey_world"}, "colour_constancy"),
    ({"mean": [0.5, 0.5]}, "mean and std"),
    ({"members": [{"backbone": "efficientnet-lite0", "image_size": None}]}, r"members\[0\].image_size"),
    ({"members": [{"backbone": "efficientnet-lite0", "image_size": 200, "input_height": 5}]},
     r"members\[0\]\.input_height"),
])
def test_unreadable_cards_are_refused_with_the_field_named(change: dict, message: str) -> None:
    with pytest.raises(CardError, match=message):
        ModelCard.from_json({**SHIPPED, **change})
    with pytest.raises(CardError, match="not a JSON object"):
        ModelCard.from_json([SHIPPED])


def test_check_names_every_field_that_disagrees_with_this_code() -> None:
    card = ModelCard.from_json(SHIPPED)
    card.check()
    wrong = replace(card, classes=("mel", "nv"), backbone="resnet-50", max_sequence=3)
    with pytest.raises(CardError) as info:
        wrong.check()
    assert all(field in str(info.value) for field in ("classes", "backbone", "max_sequence"))
    replace(card, backbone="stub-cnn").check(extra_backbones=("stub-cnn",))


def test_split_seed_and_identity() -> None:
    assert DatasetInfo(split="lesion-grouped, stratified by dx, 70/15/15, seed 12").split_seed == 12
    assert DatasetInfo(split=None).split_seed is None
    card = ModelCard(name="m", sha256="abc", training={"finished": "2026-12-02T04:44:00Z"})
    assert card.identity() == ("m", f"skin-model {C.VERSION}, trained 2026-12-02T04:44:00Z", "abc")
    assert replace(card, version="2.0").identity()[1] == "2.0"


def test_transforms_come_from_the_card(tiny_model, tmp_path: Path, lesion_photo) -> None:
    """A card that says bicubic at 96 px gives the network that input, after a save and a load."""
    photo = lesion_photo()
    config = DataConfig(image_size=96, interpolation="bicubic")
    model = type(tiny_model)(backbone=tiny_model.backbone, image_size=96, pretrained=False, data_config=config)
    card = checkpoint.save(model, tmp_path, ModelCard(name="bicubic", trust=TrustSettings(inconclusive_below=0.4)))
    assert card.data_config == config and card.sha256
    loaded, read = checkpoint.load(tmp_path)
    assert read == card and loaded.data_config == config
    x = preprocess([photo], loaded.data_config)
    assert x.shape == (1, 3, 96, 96)
    assert not torch.equal(x, preprocess([photo], DataConfig(image_size=96)))
    with pytest.raises(ValueError, match="data config for 96 px"):
        type(tiny_model)(backbone=tiny_model.backbone, image_size=128, pretrained=False, data_config=config)


def test_a_non_square_input_travels_in_the_card(tiny_model, tmp_path: Path, lesion_photo) -> None:
    """A model trained at the photos' own 4:3 shape is saved, loaded and fed at that shape; older cards
    (no `input_height`) keep their square input."""
    config = DataConfig(image_size=96, input_height=72)
    assert config.input_size == (72, 96) and config.encoder_size == (72, 96) and config.describe() == "96x72 px"
    assert DataConfig(image_size=96).input_size == (96, 96) and DataConfig(image_size=96).describe() == "96 px"
    model = type(tiny_model)(backbone=tiny_model.backbone, image_size=96, pretrained=False, data_config=config)
    card = checkpoint.save(model, tmp_path, ModelCard(name="4:3"))
    assert card.to_json()["input_height"] == 72 and "input_height" not in SHIPPED
    loaded, read = checkpoint.load(tmp_path)
    assert read.data_config == config and loaded.data_config == config
    assert preprocess([lesion_photo()], loaded.data_config).shape == (1, 3, 72, 96)
    with pytest.raises(CardError, match="input_height"):
        ModelCard.from_json({**SHIPPED, "input_height": 8})


def test_a_colour_normalisation_travels_in_the_card(tiny_model, tmp_path: Path, lesion_photo) -> None:
    """A model trained on colour-normalised photos is served colour-normalised photos after a save and a
    load; older cards (no `colour_constancy`) keep the photos' own colours."""
    config = DataConfig(image_size=96, colour_constancy="shades_of_gray")
    model = type(tiny_model)(backbone=tiny_model.backbone, image_size=96, pretrained=False, data_config=config)
    card = checkpoint.save(model, tmp_path, ModelCard(name="sog"))
    assert card.to_json()["colour_constancy"] == "shades_of_gray" and "colour_constancy" not in SHIPPED
    loaded, read = checkpoint.load(tmp_path)
    assert read.data_config == config and loaded.data_config == config
    assert ModelCard.from_json(SHIPPED).data_config.colour_constancy is None
    photo = lesion_photo()
    assert not torch.equal(preprocess([photo], loaded.data_config), preprocess([photo], DataConfig(image_size=96)))
