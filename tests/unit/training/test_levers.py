"""Levers of the CPU recipe: progressive resizing (`--progressive`), the logit-adjusted loss
(`--logit-adjust`) and the malignant-versus-benign term (`--malignant-weight`). Each must do what its name says inside a real training run, or the
ablation would measure a lever that is not there."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from skin_model.constants import CLASSES, MALIGNANT
from skin_model.model.network import SkinLesionNet
from skin_model.training import stages
from skin_model.training.config import TrainConfig
from skin_model.training.stages import LogitAdjustedLoss, input_size_at, malignant_loss, train_encoder, train_step

PRIOR = np.array([50.0, 30.0, 10.0, 5.0, 3.0, 1.0, 1.0])


def test_logit_adjustment_of_zero_is_the_plain_loss() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 7), torch.randint(0, 7, (16,))
    plain = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(LogitAdjustedLoss(PRIOR, 0.0, label_smoothing=0.1)(logits, target), plain)
    assert not torch.allclose(LogitAdjustedLoss(PRIOR, 1.0, label_smoothing=0.1)(logits, target), plain)


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_logit_adjustment_learns_the_balanced_scores(tau: float) -> None:
    """A model that can only learn one bias per class, trained on labels drawn with `PRIOR`: the
    plain loss learns the prior (the majority class always wins); with tau = 1 the logits it learns
    are the same for every class, the scores of a balanced problem (Menon et al. 2021, eq. 10)."""
    labels = torch.as_tensor(np.repeat(np.arange(7), PRIOR.astype(int)))
    bias = torch.zeros(7, requires_grad=True)
    loss_fn = LogitAdjustedLoss(PRIOR, tau)
    opt = torch.optim.LBFGS([bias], lr=0.5, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(bias.expand(len(labels), 7), labels)
        loss.backward()
        return loss

    opt.step(closure)
    learned = bias.detach().softmax(0).numpy()
    expected = PRIOR / PRIOR.sum() if tau == 0 else np.full(7, 1 / 7)
    np.testing.assert_allclose(learned, expected, atol=1e-3)


def test_progressive_sizes_follow_the_schedule() -> None:
    cfg = TrainConfig(image_size=200, input_height=150, progressive=0.6, progressive_scale=0.7)
    assert input_size_at(cfg, 0.0) == input_size_at(cfg, 0.59) == (104, 144)
    assert input_size_at(cfg, 0.6) == input_size_at(cfg, 1.0) == (150, 200)
    assert input_size_at(TrainConfig(image_size=160), 0.0) == (160, 160)  # off by default


def test_progressive_run_trains_small_first_then_at_full_size(tiny_model: SkinLesionNet) -> None:
    """The training steps see the reduced input for the first half of the run and the model's own size
    after it; validation always runs at the model's size."""
    photos = torch.randint(0, 256, (12, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(12) % len(CLASSES)
    cfg = TrainConfig(epochs=2, batch_size=4, ema=0.0, device="cpu", freeze_blocks=0, progressive=0.5,
                      progressive_scale=0.5)
    seen: list[tuple[bool, tuple[int, int]]] = []
    hook = tiny_model.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, tuple(args[0].shape[-2:]))))
    try:
        train_encoder(tiny_model, cfg, photos, labels, photos[:6], labels[:6], torch.device("cpu"))
    finally:
        hook.remove()
    full = tiny_model.data_config.input_size
    small = input_size_at(cfg, 0.0)
    assert small == (full[0] // 2, full[1] // 2)
    assert [size for training, size in seen if training] == [small] * 3 + [full] * 3  # 3 steps an epoch
    assert {size for training, size in seen if not training} == {full}


def test_progressive_cannot_use_a_cached_prefix(tiny_model: SkinLesionNet) -> None:
    photos = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(4)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", freeze_blocks=2, cached_views=2, progressive=0.5)
    with pytest.raises(ValueError, match="cannot be combined with --progressive"):
        train_encoder(tiny_model, cfg, photos, labels, photos, labels, torch.device("cpu"))


MALIGNANT_INDEX = [CLASSES.index(name) for name in sorted(MALIGNANT)]


def test_malignant_loss_is_the_cross_entropy_of_the_triage_score() -> None:
    """It is the binary cross-entropy of the summed malignant probability, and stays finite where
    that probability rounds to 0 or 1 in float32."""
    torch.manual_seed(0)
    logits, target = torch.randn(32, 7) * 3, torch.randint(0, 7, (32,))
    p_malignant = logits.softmax(-1)[:, MALIGNANT_INDEX].sum(-1).double()
    is_malignant = torch.tensor([CLASSES[t] in MALIGNANT for t in target])
    expected = -torch.where(is_malignant, p_malignant.log(), (1 - p_malignant).log()).mean()
    torch.testing.assert_close(malignant_loss(logits, target).double(), expected, rtol=1e-5, atol=1e-6)

    sure_benign = torch.full((1, 7), -200.0)
    sure_benign[0, CLASSES.index("nv")] = 200.0
    melanoma = torch.tensor([CLASSES.index("mel")])
    assert torch.isfinite(malignant_loss(sure_benign, melanoma)) and malignant_loss(sure_benign, melanoma) > 300


def test_malignant_loss_charges_only_mistakes_across_the_triage_line() -> None:
    """For a melanoma, mass moved from melanoma to basal cell carcinoma costs nothing (both are
    referred); the same mass moved to nevus does."""
    melanoma = torch.tensor([CLASSES.index("mel")])
    base = torch.zeros(1, 7)
    base[0, CLASSES.index("mel")] = 2.0
    to_bcc, to_nevus = base.clone(), base.clone()
    to_bcc[0, CLASSES.index("mel")], to_bcc[0, CLASSES.index("bcc")] = 0.0, 2.0
    to_nevus[0, CLASSES.index("mel")], to_nevus[0, CLASSES.index("nv")] = 0.0, 2.0
    torch.testing.assert_close(malignant_loss(to_bcc, melanoma), malignant_loss(base, melanoma))
    assert malignant_loss(to_nevus, melanoma) > malignant_loss(base, melanoma) + 0.5


def test_training_step_adds_the_weighted_malignant_term(tiny_model: SkinLesionNet,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same step, on the same batch and random draws, with `malignant_weight` 0.5 and 0: the
    losses differ by half the malignant term of that step's logits (with distillation on, too)."""
    photos = torch.randint(0, 256, (8, 3, 48, 64), dtype=torch.uint8)
    labels = torch.arange(8) % len(CLASSES)
    soft = torch.full((8, 7), 1 / 7)
    terms: list[float] = []

    def recorded(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = malignant_loss(logits, target)
        terms.append(value.item())
        return value

    monkeypatch.setattr(stages, "malignant_loss", recorded)
    losses = []
    for weight in (0.5, 0.0):
        model = copy.deepcopy(tiny_model).train()
        cfg = TrainConfig(malignant_weight=weight, distil_weight=0.5, device="cpu")
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        torch.manual_seed(0)
        losses.append(train_step(model, opt, nn.CrossEntropyLoss(), photos, labels, cfg,
                                 torch.Generator().manual_seed(0), torch.device("cpu"), soft=soft))
    assert len(terms) == 1 and terms[0] > 0  # weight 0 never computes it
    assert losses[0] - losses[1] == pytest.approx(0.5 * terms[0], rel=1e-4)


def _probs(rows: list[dict[str, float]]) -> np.ndarray:
    out = np.zeros((len(rows), len(CLASSES)))
    for i, row in enumerate(rows):
        for name, p in row.items():
            out[i, CLASSES.index(name)] = p
    return out


def test_malignant_auc_ranks_the_summed_malignant_probability() -> None:
    """A melanoma called a carcinoma still ranks as malignant; only benign photos scored above a
    malignant one cost AUC."""
    labels = np.array([CLASSES.index(c) for c in ("mel", "bcc", "nv", "bkl")])
    calm = _probs([{"bcc": 0.8, "nv": 0.2}, {"akiec": 0.7, "bkl": 0.3}, {"nv": 0.9, "mel": 0.1},
                   {"bkl": 0.7, "mel": 0.3}])
    assert stages.malignant_auc(calm, labels) == 1.0
    worried = calm.copy()
    worried[3] = _probs([{"bkl": 0.25, "mel": 0.75}])[0]  # above the carcinoma (0.7), below the melanoma (0.8)
    assert stages.malignant_auc(worried, labels) == 0.75


@pytest.mark.parametrize(("select", "kept"), [("balanced", 1), ("triage", 2)])
def test_selection_keeps_the_epoch_its_score_prefers(tiny_model: SkinLesionNet, monkeypatch: pytest.MonkeyPatch,
                                                    select: str, kept: int) -> None:
    """Epoch 1 classifies better, epoch 2 ranks malignant lesions better: "balanced" keeps the first,
    "triage" the second, and both record the malignant AUC of every epoch."""
    scripted = iter([({"balanced_accuracy": 0.70, "accuracy": 0.8, "macro_auc": 0.95}, 0.90),
                     ({"balanced_accuracy": 0.60, "accuracy": 0.8, "macro_auc": 0.94}, 0.93)])
    current: list[float] = []

    def report(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        figures, malignant = next(scripted)
        current[:] = [malignant]
        return dict(figures)

    monkeypatch.setattr(stages, "classification_report", report)
    monkeypatch.setattr(stages, "malignant_auc", lambda probs, labels: current[0])
    photos = torch.randint(0, 256, (8, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(8) % len(CLASSES)
    cfg = TrainConfig(epochs=2, batch_size=4, ema=0.0, device="cpu", freeze_blocks=0, select=select)
    result = train_encoder(copy.deepcopy(tiny_model), cfg, photos, labels, photos[:4], labels[:4], torch.device("cpu"))
    assert result["best_epoch"] == kept
    assert [row["val_malignant_auc"] for row in result["history"]] == [0.90, 0.93]


def test_unknown_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="select must be one of balanced, triage"):
        TrainConfig(select="accuracy")


def test_unknown_colour_constancy_is_refused() -> None:
    with pytest.raises(ValueError, match="colour_constancy must be one of shades_of_gray"):
        TrainConfig(colour_constancy="grey_world")
    assert TrainConfig(colour_constancy="shades_of_gray").data_config.colour_constancy == "shades_of_gray"


def test_a_colour_normalising_model_trains_on_colour_normalised_views(tiny_model) -> None:
    """The card's colour constancy reaches the training views: the same photos under a warm light cost
    the same loss as under a neutral one for such a model, and not for a model without it."""
    grey = torch.randint(60, 200, (8, 1, 48, 64), generator=torch.Generator().manual_seed(0)).double()
    neutral = (grey * torch.tensor([0.95, 0.85, 0.8]).view(1, 3, 1, 1)).round().to(torch.uint8)
    warm = (grey * torch.tensor([1.1, 0.8, 0.55]).view(1, 3, 1, 1)).round().to(torch.uint8)
    labels = torch.arange(8) % len(CLASSES)
    gaps = {}
    for colour in (None, "shades_of_gray"):
        config = TrainConfig(image_size=64, input_height=48, colour_constancy=colour, device="cpu")
        model = SkinLesionNet(tiny_model.backbone, 64, pretrained=False, data_config=config.data_config)
        model.load_state_dict(tiny_model.state_dict(), strict=False)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses = []
        for photos in (neutral, warm):
            torch.manual_seed(0)
            losses.append(train_step(model, opt, nn.CrossEntropyLoss(), photos, labels, config,
                                     torch.Generator().manual_seed(0), torch.device("cpu")))
        gaps[colour] = abs(losses[0] - losses[1])
    assert gaps["shades_of_gray"] < gaps[None] / 5, gaps
