"""Two levers of the CPU recipe: progressive resizing (`--progressive`) and the logit-adjusted
loss (`--logit-adjust`). Each must do what its name says inside a real training run, or the
ablation would measure a lever that is not there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skin_model.constants import CLASSES
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.stages import LogitAdjustedLoss, input_size_at, train_encoder

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
