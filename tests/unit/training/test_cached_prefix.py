"""The cached frozen prefix (`--cached-views`): the stem and first blocks run once per augmented view,
and the rest of the network trains on their stored output. It must be the same network as the
plain forward, view for view, or the cached recipe would train a model that inference never runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import STUB_BACKBONE, build_tiny_model

from skin_model.constants import CLASSES
from skin_model.data.transforms import augment_batch
from skin_model.model import backbones
from skin_model.model.network import SkinLesionNet
from skin_model.training.config import TrainConfig
from skin_model.training.stages import cache_prefix, train_encoder


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", STUB_BACKBONE])
@pytest.mark.parametrize("n_blocks", [1, 5, 8])
def test_split_forward_is_the_plain_forward(backbone: str, n_blocks: int) -> None:
    """`features_from_prefix(prefix(x, n), n)` is `features(x)` wherever the encoder is cut."""
    model = build_tiny_model(backbone=backbone).eval()
    n_blocks = min(n_blocks, 2) if backbone == STUB_BACKBONE else n_blocks
    x = torch.randn(3, 3, 48, 64)
    with torch.no_grad():
        plain = model.features(x)
        split = model.features_from_prefix(model.prefix(x, n_blocks), n_blocks)
    assert plain.shape == split.shape == (3, 1280)
    assert plain.std() > 1e-3  # a network whose features carry the photo, so equality means something
    torch.testing.assert_close(split, plain, atol=1e-5, rtol=1e-5)


def test_cached_view_gives_the_logits_of_the_plain_forward() -> None:
    """The cache holds the prefix of exactly the views training's augmentation draws: the logits trained
    on a cached view are those of the plain forward of that view (to float16 storage precision)."""
    model = build_tiny_model(backbone="efficientnet-lite0").eval()
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (5, 3, 48, 64), dtype=torch.uint8)
    cache = cache_prefix(model, photos, n_blocks=8, views=2, seed=3, device=torch.device("cpu"))
    assert cache.dtype == torch.float16 and cache.shape[:2] == (2, 5)

    gen = torch.Generator().manual_seed(3 + 7919)  # the cache's own generator, as documented in cache_prefix
    first_view = augment_batch(photos, model.data_config.input_size, gen)
    second_view = augment_batch(photos, model.data_config.input_size, gen)
    with torch.no_grad():
        for view, cached in ((first_view, cache[0]), (second_view, cache[1])):
            plain = model.photo_logits(model.features(view))
            from_cache = model.photo_logits(model.features_from_prefix(cached.float(), 8))
            torch.testing.assert_close(from_cache, plain, atol=2e-2, rtol=2e-2)
        assert not torch.allclose(cache[0].float(), cache[1].float())  # two different views, not one twice


def test_cached_training_trains_only_after_the_prefix(tiny_model: SkinLesionNet) -> None:
    """A cached run leaves the frozen stem and blocks as they were and changes the rest."""
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (12, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(12) % len(CLASSES)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, ema=0.0, device="cpu", freeze_blocks=2, cached_views=3)
    before = copy.deepcopy(tiny_model)
    result = train_encoder(tiny_model, cfg, photos, labels, photos[:6], labels[:6], torch.device("cpu"))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    enc, old = tiny_model.encoder, before.encoder
    for frozen, was in ((enc.stem, old.stem), (enc.blocks[0], old.blocks[0]), (enc.blocks[1], old.blocks[1])):
        for a, b in zip(frozen.state_dict().values(), was.state_dict().values()):
            assert torch.equal(a, b)
    assert not torch.equal(enc.blocks[2][0].weight, old.blocks[2][0].weight)
    assert not torch.equal(tiny_model.photo_head.weight, before.photo_head.weight)


def test_cached_prefix_needs_frozen_blocks(tiny_model: SkinLesionNet) -> None:
    photos = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    labels = np.arange(4)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", freeze_blocks=0, cached_views=2)
    with pytest.raises(ValueError, match="--freeze-blocks 1 or more"):
        train_encoder(tiny_model, cfg, photos, labels, photos, labels, torch.device("cpu"))


def test_a_backbone_without_a_split_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backbones.REGISTRY, "no-split-cnn", backbones.Backbone(
        build=lambda size, pretrained: torch.nn.Identity(), early_layers=lambda enc, n: [], cam_layer=lambda enc: enc))
    with pytest.raises(ValueError, match="cannot cache a frozen prefix"):
        backbones.split_forward("no-split-cnn")
