"""skin_model.model.ensemble and ensemble members in the model: two tiny trained-looking models
combined, saved, loaded, served, explained and checked for out-of-distribution input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import STUB_BACKBONE, build_tiny_model

from skin_model import engine
from skin_model.cli import main
from skin_model.constants import CARD_FILE
from skin_model.data.config import DataConfig
from skin_model.explain.cam import METHODS, Explainer
from skin_model.model import checkpoint
from skin_model.model.card import DatasetInfo, ModelCard
from skin_model.model.ensemble import combine
from skin_model.model.network import FEATURE_DIM, SkinLesionNet
from skin_model.predict import load_predictor


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different single models: the main one at the default input size, a member at 64 px."""
    root = tmp_path_factory.mktemp("ensemble")
    main_model = build_tiny_model(seed=0)
    main_model.sequence_mix.fill_(0.0)
    data = DatasetInfo(split="lesion-grouped, seed 0", metadata_md5="abc")
    checkpoint.save(main_model, root / "main",
                    ModelCard(name="main", training={"hardware": "here", "seconds": 1.0}, data=data))
    other = build_tiny_model(seed=1)
    small = type(other)(backbone=other.backbone, pretrained=False, image_size=64)
    small.load_state_dict(other.state_dict())
    checkpoint.save(small, root / "other",
                    ModelCard(name="other", training={"hardware": "there", "seconds": 2.0}, data=data))
    checkpoint.save(small, root / "other_split",
                    ModelCard(name="other", data=replace(data, split="lesion-grouped, seed 1")))
    return root / "main", root / "other"


@pytest.fixture(scope="module")
def combined(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("combined") / "w"
    combine(sources[0], [sources[1]], out)
    return out


def test_photo_logits_are_the_mean_of_the_members(sources, combined, lesion_photo) -> None:
    main_model, _ = checkpoint.load(sources[0])
    other, _ = checkpoint.load(sources[1])
    ensemble, card = checkpoint.load(combined)
    photos = [lesion_photo(), lesion_photo(centre=(0.3, 0.7), seed=1)]
    with torch.no_grad():
        feats = ensemble.features(engine.preprocess(photos, ensemble.data_config))
        logits = ensemble.photo_logits(feats)
        a = main_model.photo_logits(main_model.features(engine.preprocess(photos, main_model.data_config)))
        b = other.photo_logits(other.features(engine.preprocess(photos, other.data_config)))
    assert feats.shape == (2, 2 * FEATURE_DIM)
    # the member resizes the batch itself (bilinear), close to decoding at its own size
    assert torch.allclose(logits, (a + b) / 2, atol=0.1)
    assert not torch.allclose(logits, a, atol=1e-3) and not torch.allclose(logits, b, atol=1e-3)
    assert [(m.backbone, m.image_size) for m in card.members] == [(STUB_BACKBONE, 64)]
    assert card.members[0].source_sha256 == checkpoint.read_card(sources[1]).sha256
    assert card.members[0].training["hardware"] == "there"
    assert "not yet calibrated" in card.name


def test_every_member_sees_photos_at_its_own_size_and_aspect(tmp_path: Path, lesion_photo) -> None:
    """A member trained on 4:3 photos gets them at 4:3, not squashed into a square, and the ensemble keeps
    its main model's own (here 4:3) input; the card carries both across a save and a load."""
    data = DatasetInfo(split="lesion-grouped, seed 0", metadata_md5="abc")
    for name, config, seed in (("main", DataConfig(image_size=80, input_height=60), 0),
                               ("member", DataConfig(image_size=64, input_height=48), 1)):
        model = SkinLesionNet(backbone=STUB_BACKBONE, pretrained=False, image_size=config.image_size, data_config=config)
        model.load_state_dict(build_tiny_model(seed=seed).state_dict())
        checkpoint.save(model.eval(), tmp_path / name, ModelCard(name=name, data=data))
    combine(tmp_path / "main", [tmp_path / "member"], tmp_path / "w")
    ensemble, card = checkpoint.load(tmp_path / "w")
    assert ensemble.data_config.input_size == card.data_config.input_size == (60, 80)
    assert card.members[0].data_config.input_size == ensemble.members[0].data_config.input_size == (48, 64)
    shapes: list[tuple[int, ...]] = []
    ensemble.members[0].encoder.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    photos = [lesion_photo(), lesion_photo(centre=(0.3, 0.7), seed=1)]
    with torch.no_grad():
        logits = ensemble.photo_logits(ensemble.features(engine.preprocess(photos, ensemble.data_config)))
        parts = [m.photo_logits(m.features(engine.preprocess(photos, m.data_config)))
                 for m in (checkpoint.load(tmp_path / n)[0] for n in ("main", "member"))]
    assert shapes == [(2, 3, 48, 64)]
    assert torch.allclose(logits, sum(parts) / 2, atol=0.1)


def test_main_model_keeps_its_sequence_head_and_ood_statistics(sources, combined) -> None:
    main_model, _ = checkpoint.load(sources[0])
    ensemble, _ = checkpoint.load(combined)
    for name, value in main_model.state_dict().items():
        assert torch.equal(ensemble.state_dict()[name], value), name
    assert ensemble.ood_means.shape == (7, FEATURE_DIM)


def test_ensemble_serves_predictions_sequences_and_heatmaps(combined, lesion_photo) -> None:
    predictor = load_predictor(combined, device="cpu")
    photos = [lesion_photo(), lesion_photo(centre=(0.3, 0.7), seed=1)]
    result = predictor.predict(photos, age=50, sex="female", site="back")
    assert result.sequence is not None and abs(sum(result.sequence.values()) - 1) < 1e-5
    assert len(result.ood) == 2
    assert predictor.engine.name == "PyTorch"  # a member's antialiased resize has no ONNX export: torch serves it
    explainer = predictor.explainer
    assert isinstance(explainer, Explainer)
    for method in METHODS:
        heat = explainer.heatmaps(photos[:1], method=method)[0]
        assert heat.resized((40, 30)).shape == (30, 40)
    hooked = [n for n, m in explainer._model.named_modules() if m._forward_hooks or m._backward_hooks]
    assert hooked == []


def test_combine_refuses_nonsense(sources, combined, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        combine(sources[0], [], tmp_path / "x")
    with pytest.raises(ValueError, match="single models"):
        combine(combined, [sources[1]], tmp_path / "y")
    with pytest.raises(ValueError, match="another split"):
        combine(sources[0], [sources[1].parent / "other_split"], tmp_path / "z")
    assert not (tmp_path / "z").exists()
    _, card = checkpoint.load(sources[0])
    normalised = SkinLesionNet(backbone=STUB_BACKBONE, pretrained=False,
                               data_config=DataConfig(colour_constancy="shades_of_gray"))
    checkpoint.save(normalised, tmp_path / "sog", ModelCard(name="sog", data=card.data))
    with pytest.raises(ValueError, match="colour normalisation"):
        combine(sources[0], [tmp_path / "sog"], tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_card_with_a_bad_member_is_refused(combined, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(combined, bad)
    card = json.loads((bad / CARD_FILE).read_text())
    card["members"][0]["backbone"] = "resnet-9000"
    (bad / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(checkpoint.WeightsError, match=r"members\[0\]\.backbone"):
        checkpoint.load(bad)


def test_cli_combine(sources, tmp_path: Path, capsys) -> None:
    assert main(["combine", str(sources[0]), str(sources[1]), "--out", str(tmp_path / "w")]) == 0
    assert "skin-model calibrate --weights" in capsys.readouterr().out
    assert len(checkpoint.read_card(tmp_path / "w").members) == 1
