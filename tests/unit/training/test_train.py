"""skin_model.training.train: a smoke run of the whole recipe on a tiny fake HAM10000 folder."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import STUB_BACKBONE

from skin_model import constants as C
from skin_model.constants import CARD_FILE, CLASSES, WEIGHTS_FILE
from skin_model.data.ham10000 import load_ham10000, split_lesions
from skin_model.devices import describe
from skin_model.model import checkpoint
from skin_model.model.backbones import build_imagenet as build_backbone
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet
from skin_model.predict import load_predictor
from skin_model.training.config import TrainConfig
from skin_model.training.stages import (
    RESUME_FILE,
    load_resume,
    new_optimizer,
    save_resume,
    train_encoder,
    train_step,
)
from skin_model.training.train import run, view_teacher, warm_start


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, fake_ham_at) -> tuple[Path, Path, ModelCard]:
    """One tiny training run shared by the tests below (it loads the ImageNet weights)."""
    root = tmp_path_factory.mktemp("train")
    # 4 lesions per class (1 or 2 photos each): 42 photos, and every split gets lesions
    data = fake_ham_at(root / "ham", "flat", lesions_per_class=4, images_per_lesion=(1, 2))
    out = root / "weights"
    cfg = TrainConfig(data=str(data), out=str(out), epochs=1, limit=16, views=1, sequence_steps=5,
                      batch_size=8, device="cpu")
    card = run(cfg)
    return data, out, card


def test_fake_data_reaches_every_split(trained: tuple[Path, Path, dict]) -> None:
    data, _, _ = trained
    table = load_ham10000(data).table
    assert len(table) == 42
    split = split_lesions(table)
    assert set(split) == {"train", "val", "test"}


def test_writes_weights_and_card_that_load(trained: tuple[Path, Path, ModelCard]) -> None:
    _, out, card = trained
    assert (out / WEIGHTS_FILE).is_file() and (out / CARD_FILE).is_file()
    written = json.loads((out / CARD_FILE).read_text())

    def text(entries: dict) -> str:  # compared as JSON text: NaN (a class absent from the tiny test split) != NaN
        return json.dumps(entries, sort_keys=True)

    assert isinstance(card, ModelCard) and text(card.to_json()) == text(written)
    assert card.sha256 == checkpoint.sha256(out / WEIGHTS_FILE)
    model, loaded_card = checkpoint.load(out)
    assert text(loaded_card.to_json()) == text(card.to_json())
    assert replace(loaded_card, metrics={}) == replace(card, metrics={})
    constants = {"classes": list(C.CLASSES), "class_names": dict(C.CLASS_NAMES), "malignant": sorted(C.MALIGNANT),
                 "mean": list(C.MEAN), "std": list(C.STD), "image_size": C.IMAGE_SIZE, "backbone": C.BACKBONE,
                 "max_sequence": C.MAX_SEQUENCE, "meta_dim": C.META_DIM}
    for key, value in constants.items():
        assert written[key] == value, key


def test_card_contents(trained: tuple[Path, Path, ModelCard]) -> None:
    data, _, card = trained
    training = card.training
    assert isinstance(training["hardware"], str) and training["hardware"]
    assert training["trust_device"] == describe(torch.device("cpu"))  # where calibration and OOD were fitted
    assert training["config"]["epochs"] == 1 and training["config"]["limit"] == 16
    assert training["config"]["data"] == str(data)
    assert [h["epoch"] for h in training["stage1"]["history"]] == [1]
    assert training["stage2"]["steps"] == 5 and np.isfinite(training["stage2"]["final_loss"])
    assert card.data.metadata_md5 == load_ham10000(data).fingerprint
    metrics = card.metrics
    assert metrics["split"] == "test" and metrics["n_photos"] > 0
    full = metrics["single_photo"]["full"]
    assert full["n"] == metrics["n_photos"]
    assert 0.0 <= full["accuracy"] <= 1.0 and 0.0 <= full["ece"] <= 1.0
    assert np.array(full["confusion_matrix"]).sum() == metrics["n_photos"]
    assert set(full["per_class"]) == set(CLASSES)


def test_training_changed_the_weights(trained: tuple[Path, Path, ModelCard]) -> None:
    _, out, _ = trained
    model, _ = checkpoint.load(out)
    imagenet = build_backbone(pretrained=True).state_dict()
    own = model.encoder.state_dict()
    # early blocks are frozen, the last blocks are fine-tuned from ImageNet
    assert torch.equal(own["_conv_stem.weight"], imagenet["_conv_stem.weight"])
    assert not torch.equal(own["_blocks.15._project_conv.weight"], imagenet["_blocks.15._project_conv.weight"])
    # stage 2 trained the LSTM correction away from its zero start
    assert model.sequence_head.weight.abs().sum() > 0
    # calibration was fitted and stored
    assert float(model.photo_temperature) > 0 and float(model.sequence_temperature) > 0


def test_trained_weights_serve_predictions(trained: tuple[Path, Path, ModelCard]) -> None:
    data, out, _ = trained
    first = pd.read_csv(data / "HAM10000_metadata.csv").image_id.iloc[:2]
    photos = [data / "images" / f"{image_id}.jpg" for image_id in first]
    result = load_predictor(out, device="cpu").predict(photos)
    assert result.sequence is not None
    for probs in result.photos + [result.sequence]:
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_ema_keeps_the_moving_average_of_the_weights(tiny_model) -> None:
    """With --ema the weights kept are decay * previous average + (1 - decay) * new weights, not the last step's."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (8, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(8) % len(CLASSES)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, ema=0.5, device="cpu")
    name = "photo_head.weight"
    after_step: list[torch.Tensor] = []
    real_step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        after_step.append(dict(tiny_model.named_parameters())[name].detach().clone())
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", recording)
        result = train_encoder(tiny_model, cfg, photos, labels, photos[:4], labels[:4], torch.device("cpu"))
    assert len(after_step) == 2 and result["best_epoch"] == 1
    kept = dict(tiny_model.named_parameters())[name].detach()
    # the first update copies the weights, the second averages with decay 0.5
    assert torch.allclose(kept, 0.5 * after_step[0] + 0.5 * after_step[1], atol=1e-6)
    assert not torch.allclose(kept, after_step[1], atol=1e-4)


class _Stop(Exception):
    """Stands for a run killed after its first epoch checkpoint."""


def save_then_die(path: Path, state: dict) -> None:
    """Writes the epoch checkpoint, then dies as a killed run would."""
    save_resume(path, state)
    raise _Stop


def _train_tiny(model, cfg: TrainConfig, photos: torch.Tensor, labels: np.ndarray, **kwargs) -> dict:
    return train_encoder(model, cfg, photos, labels, photos[:6], labels[:6], torch.device("cpu"), **kwargs)


@pytest.mark.parametrize("lever", [{}, {"cached_views": 2}, {"progressive": 0.5, "logit_adjust": 1.0}],
                         ids=["plain", "cached-prefix", "progressive-logit-adjusted"])
def test_resume_continues_exactly_where_the_run_stopped(tiny_model, tmp_path: Path, lever: dict) -> None:
    """Killed after epoch 1 of 3 and resumed from its checkpoint, a run ends with the same weights
    as one never interrupted: optimiser, schedule, EMA and every random generator are restored (with a
    cached frozen prefix, the cache is rebuilt the same; with progressive resizing, the resumed
    schedule picks up the input size where it was)."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (12, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(12) % len(CLASSES)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, ema=0.9, mixup=0.5, device="cpu", freeze_blocks=2, **lever)
    fresh = copy.deepcopy(tiny_model)

    torch.manual_seed(1)
    whole = copy.deepcopy(fresh)
    whole_result = _train_tiny(whole, cfg, photos, labels, checkpoint_to=tmp_path / "a" / RESUME_FILE)

    torch.manual_seed(1)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Stop):
        patch.setattr("skin_model.training.stages.save_resume", save_then_die)
        _train_tiny(copy.deepcopy(fresh), cfg, photos, labels, checkpoint_to=tmp_path / "b" / RESUME_FILE)
    saved = load_resume(tmp_path / "b")
    assert saved["epoch"] == 1 and saved["config"]["epochs"] == 3

    torch.manual_seed(123)  # whatever the global generator holds now, the checkpoint's state is used
    resumed = copy.deepcopy(fresh)
    resumed_result = _train_tiny(resumed, cfg, photos, labels, resume=saved,
                                 checkpoint_to=tmp_path / "c" / RESUME_FILE)

    def curve(result: dict) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in result["history"]]

    assert [h["epoch"] for h in resumed_result["history"]] == [1, 2, 3]
    for a, b in zip(curve(whole_result), curve(resumed_result)):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)
    assert resumed_result["best_epoch"] == whole_result["best_epoch"]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    # the last epoch's full state (not only the best epoch's weights kept at the end) matches too
    last_whole, last_resumed = load_resume(tmp_path / "a"), load_resume(tmp_path / "c")
    assert last_whole["epoch"] == last_resumed["epoch"] == 3
    for part in ("model", "ema"):
        for name, a in last_whole[part].items():
            assert torch.allclose(a.float(), last_resumed[part][name].float(), atol=1e-6), (part, name)
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(last_whole["optimizer"]["state"].values(),
                                                            last_resumed["optimizer"]["state"].values())]
    assert moments and all(torch.allclose(a, b, atol=1e-6) for a, b in moments)
    changed = [not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), whole.state_dict().values())]
    assert any(changed)


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load_resume(tmp_path)


def test_warm_start_loads_the_shipped_weights() -> None:
    """--init copies the shipped main model (its input size may differ); ensemble members are left out."""
    shipped, card = checkpoint.load()
    model = SkinLesionNet(card.backbone, 96, pretrained=False)
    info = warm_start(model, checkpoint.default_weights_dir())
    assert info["sha256"] == card.sha256
    own, theirs = model.state_dict(), shipped.state_dict()
    assert info["tensors"] == len(own)
    for name, value in own.items():
        assert torch.equal(value, theirs[name]), name


def test_warm_start_refuses_another_backbone(tiny_weights: Path) -> None:
    with pytest.raises(ValueError, match=f"--init weights use {STUB_BACKBONE}, this run trains efficientnet-lite1"):
        warm_start(SkinLesionNet("efficientnet-lite1", 64, pretrained=False), tiny_weights)


def test_killed_run_resumes_from_the_command_line(tmp_path: Path, tiny_weights: Path, fake_ham_at) -> None:
    """`skin-model train --init WEIGHTS` killed after its first epoch, then `skin-model train --resume DIR`:
    the run finishes with its saved options, records the warm start and the resume, and removes
    its checkpoint."""
    from skin_model.cli import main

    data = fake_ham_at(tmp_path / "ham", "flat", lesions_per_class=4, images_per_lesion=(1, 2))
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), backbone=STUB_BACKBONE, epochs=2, limit=16, views=1,
                      sequence_steps=3, batch_size=8, device="cpu", heatmap_photos=0, init=str(tiny_weights))
    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Stop):
        patch.setattr("skin_model.training.stages.save_resume", save_then_die)
        run(cfg)
    assert (out / RESUME_FILE).is_file() and not (out / CARD_FILE).exists()

    assert main(["train", "--resume", str(out)]) == 0
    card = json.loads((out / CARD_FILE).read_text())
    training = card["training"]
    assert training["resumed"] is True
    assert training["init"]["sha256"] == checkpoint.read_card(tiny_weights).sha256
    assert training["config"]["epochs"] == 2 and training["config"]["init"] == str(tiny_weights)
    assert [h["epoch"] for h in training["stage1"]["history"]] == [1, 2]
    assert not (out / RESUME_FILE).exists()


def test_distillation_loss_follows_the_teacher(tiny_model) -> None:
    """With all weight on the teacher, one-hot teacher probabilities give the plain label loss, and
    other teacher probabilities another loss."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    y = torch.tensor([0, 1, 4, 5])
    cfg = TrainConfig(label_smoothing=0.0, distil_weight=1.0, lr=0.0, freeze_blocks=0)
    losses = []
    for soft in (None, torch.nn.functional.one_hot(y, len(CLASSES)).float(), torch.full((4, len(CLASSES)), 1 / 7)):
        model = copy.deepcopy(tiny_model).eval()  # eval: no dropout, so the three forwards match
        _, opt = new_optimizer(model, cfg)
        gen = torch.Generator().manual_seed(0)
        losses.append(train_step(model, opt, torch.nn.CrossEntropyLoss(), photos, y, cfg, gen,
                                 torch.device("cpu"), soft=soft))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert abs(losses[2] - losses[0]) > 1e-3


def test_distilled_model_card_lists_its_teacher(trained: tuple[Path, Path, ModelCard], tmp_path: Path) -> None:
    """A student trained with --teacher (another seed, the teacher's split) records the teacher in its
    card; --fit-trust false stops before calibration with a card that `combine` accepts."""
    data, teacher, teacher_card = trained
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "student"), epochs=1, limit=16, views=1, sequence_steps=2,
                      batch_size=8, device="cpu", teacher=str(teacher), seed=3, split_seed=0, fit_trust=False)
    card = run(cfg)
    recorded = card.training["teacher"]
    assert recorded["sha256"] == teacher_card.sha256 and recorded["weights"] == str(teacher)
    assert recorded["members"] == [{"backbone": teacher_card.backbone, "image_size": teacher_card.image_size,
                                    "input_height": teacher_card.data_config.input_height}]
    assert card.metrics == {} and card.trust.ood is None and card.data.split == teacher_card.data.split
    with pytest.raises(ValueError, match="another split"):
        run(replace(cfg, split_seed=1, out=str(tmp_path / "other")))


def test_resumed_distillation_keeps_its_soft_labels(trained: tuple[Path, Path, ModelCard], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A distillation killed after its first epoch resumes with the teacher's probabilities it saved:
    the teacher is run once in all, and the resumed run still learns from it and names it."""
    import skin_model.training.train as train_module

    data, teacher, teacher_card = trained
    calls: list[torch.Tensor] = []
    original = train_module.teacher_probabilities

    def counted(*args, **kwargs):
        soft, info = original(*args, **kwargs)
        calls.append(soft)
        return soft, info

    monkeypatch.setattr(train_module, "teacher_probabilities", counted)
    out = tmp_path / "student"
    cfg = TrainConfig(data=str(data), out=str(out), backbone=STUB_BACKBONE, epochs=2, limit=16, views=1,
                      sequence_steps=2, batch_size=8, device="cpu", teacher=str(teacher), fit_trust=False)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Stop):
        patch.setattr("skin_model.training.stages.save_resume", save_then_die)
        run(cfg)
    saved = load_resume(out)["provenance"]
    assert len(calls) == 1 and torch.equal(saved["soft"], calls[0])
    card = run(cfg, resume=out)
    assert len(calls) == 1
    assert card.training["resumed"] is True and card.training["teacher"]["sha256"] == teacher_card.sha256
    assert [h["epoch"] for h in card.training["stage1"]["history"]] == [1, 2]


def test_same_view_distillation_resumes_with_its_teacher(trained: tuple[Path, Path, ModelCard], tmp_path: Path) -> None:
    """--distil-same-view: the card records a teacher that labelled each view at its own input size; a
    killed run resumes with the same teacher, refuses a changed one, and the option needs a teacher and
    the photos themselves (no cached prefix)."""
    data, teacher, teacher_card = trained
    out = tmp_path / "student"
    cfg = TrainConfig(data=str(data), out=str(out), backbone=STUB_BACKBONE, epochs=2, limit=16, views=1,
                      sequence_steps=2, batch_size=8, device="cpu", teacher=str(teacher), distil_same_view=True,
                      fit_trust=False)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Stop):
        patch.setattr("skin_model.training.stages.save_resume", save_then_die)
        run(cfg)
    saved = load_resume(out)["provenance"]
    assert saved["soft"] is None and saved["teacher"]["same_view"] is True
    card = run(cfg, resume=out)
    recorded = card.training["teacher"]
    assert recorded["sha256"] == teacher_card.sha256 and recorded["same_view"] is True
    assert recorded["input_sizes"] == [list(teacher_card.data_config.input_size)]
    assert card.training["resumed"] is True and [h["epoch"] for h in card.training["stage1"]["history"]] == [1, 2]
    fingerprint = load_ham10000(data).fingerprint
    with pytest.raises(ValueError, match="changed since this run started"):
        view_teacher(teacher, 0, fingerprint, {**saved["teacher"], "sha256": "0" * 64})
    with pytest.raises(ValueError, match="needs a --teacher"):
        run(replace(cfg, teacher=None, out=str(tmp_path / "alone")))
    with pytest.raises(ValueError, match="cached prefix"):
        run(replace(cfg, cached_views=2, freeze_blocks=1, out=str(tmp_path / "cached")))


@pytest.mark.slow
def test_gpu_recipe_script_runs_end_to_end(tmp_path: Path, fake_ham_at) -> None:
    """scripts/gpu_recipe.sh on tiny data (on the CPU here): seeds -> ensemble -> one distilled, calibrated
    student whose card names its teacher, and weights parts that join into the checksummed file."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[3]
    data = fake_ham_at(tmp_path / "ham", "flat", lesions_per_class=4, images_per_lesion=(1, 2))
    out = tmp_path / "gpu"
    env = {**os.environ, "SKIN_MODEL_ALLOW_CPU": "1", "SEEDS": "1 2", "SIZE": "64", "EPOCHS": "1",
           "EXTRA": "--limit 16 --batch-size 8 --device cpu --sequence-steps 2 --heatmap-photos 0"}
    done = subprocess.run(["bash", str(repo / "scripts" / "gpu_recipe.sh"), str(data), str(out)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "student" / CARD_FILE).read_text())
    assert card["training"]["teacher"]["weights"] == str(out / "ensemble")
    assert len(card["training"]["teacher"]["members"]) == 2 and card["members"] == []
    assert "metrics" in card and card["image_size"] == 64
    parts = sorted((out / "parts").glob("skin_model.safetensors.part-*"))
    joined = tmp_path / "joined.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert checkpoint.sha256(joined) == json.loads((out / "parts" / CARD_FILE).read_text())["sha256"]


def test_resume_on_another_device_says_how(tiny_model) -> None:
    photos = torch.zeros((4, 3, 48, 64), dtype=torch.uint8)
    with pytest.raises(ValueError, match="saved on cuda"):
        _train_tiny(tiny_model, TrainConfig(epochs=1, batch_size=4), photos, np.arange(4), resume={"device_type": "cuda"})


def test_update_card_measures_the_test_figures_again_and_touches_nothing_else(
        trained: tuple[Path, Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`skin-model evaluate --update-card`: after the evaluation gains a figure, the card's test figures are
    measured again on the whole test split; the weights, their graphs and the trust layer stay as they are."""
    import shutil

    from skin_model.cli import main
    from skin_model.model.files import read_card, write_card

    data, out, card = trained
    weights = tmp_path / "weights"
    shutil.copytree(out, weights)
    write_card(weights, replace(card, metrics={}))
    files = {p.name: p.read_bytes() for p in weights.iterdir() if p.name != CARD_FILE}
    assert main(["evaluate", "--weights", str(weights), "--data", str(data), "--update-card", "--device", "cpu"]) == 0
    assert "weights and trust layer unchanged" in capsys.readouterr().out
    updated = read_card(weights)
    assert {p.name: p.read_bytes() for p in weights.iterdir() if p.name != CARD_FILE} == files
    assert replace(updated, metrics={}) == replace(card, metrics={})
    test_photos = int((split_lesions(load_ham10000(data).table) == "test").sum())
    assert updated.metrics["n_photos"] == test_photos  # the whole split, though the run measured a --limit
    assert set(updated.metrics) >= {"single_photo", "intervals", "ood", "heatmaps"}
    assert card.trust.triage is not None
    assert "benign_specificity_by_confirmation" in updated.metrics["triage"]
    checkpoint.load(weights)  # still verified
    assert main(["evaluate", "--weights", str(weights), "--data", str(data), "--update-card", "--limit", "3"]) == 1
    assert "the whole test split" in capsys.readouterr().err
