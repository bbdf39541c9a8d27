"""skin_model.model.network: shapes, the sequence head's design, padding, patient context, ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from skin_model.constants import CLASSES, IMAGE_SIZE, META_DIM
from skin_model.data.preprocess import encode_metadata
from skin_model.engine import preprocess
from skin_model.model.backbones import FEATURE_DIM
from skin_model.model.backbones import build_imagenet as build_backbone
from skin_model.model.network import SkinLesionNet

N_CLASSES = len(CLASSES)
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture
def photos(lesion_photo) -> torch.Tensor:
    """Three different lesion photos as a (3, 3, 128, 128) batch."""
    return preprocess([lesion_photo(), lesion_photo(centre=(0.3, 0.7), radii=(0.1, 0.1), seed=1),
                     lesion_photo(centre=(0.7, 0.3), radii=(0.3, 0.3), lesion=(150, 40, 40), seed=2)])


def _randomise_sequence_head(model: SkinLesionNet) -> None:
    torch.manual_seed(1)
    torch.nn.init.normal_(model.sequence_head.weight, std=0.5)
    torch.nn.init.normal_(model.sequence_head.bias, std=0.5)


def test_output_shapes(tiny_model: SkinLesionNet, photos: torch.Tensor) -> None:
    assert photos.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        feats = tiny_model.features(photos)
        logits = tiny_model(photos)
        photo, seq = tiny_model.forward_sequence(photos)
    assert feats.shape == (3, FEATURE_DIM)
    assert logits.shape == (3, N_CLASSES)
    assert photo.shape == (3, N_CLASSES) and seq.shape == (N_CLASSES,)
    assert torch.isfinite(logits).all() and torch.isfinite(seq).all()
    assert torch.allclose(photo, logits, atol=1e-5)
    # different photos get different outputs (the test model is not degenerate)
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)


def test_sequence_of_one_photo_equals_the_photo(tiny_model: SkinLesionNet, photos: torch.Tensor) -> None:
    assert not tiny_model.sequence_head.weight.any() and not tiny_model.sequence_head.bias.any()
    for sharpness in (0.0, 30.0):
        tiny_model.sequence_sharpness.fill_(sharpness)
        with torch.no_grad():
            photo, seq = tiny_model.forward_sequence(photos[:1])
        assert torch.allclose(seq.softmax(-1), photo[0].softmax(-1), atol=1e-6)


def test_fresh_sequence_head_gives_mean_of_photo_probabilities(tiny_model: SkinLesionNet, photos: torch.Tensor) -> None:
    with torch.no_grad():
        photo, seq = tiny_model.forward_sequence(photos)
    assert torch.allclose(seq.softmax(-1), photo.softmax(-1).mean(0), atol=1e-6)
    # once the LSTM correction is non-zero, the sequence is no longer just the mean
    _randomise_sequence_head(tiny_model)
    with torch.no_grad():
        photo2, seq2 = tiny_model.forward_sequence(photos)
    assert torch.allclose(photo2, photo)
    assert not torch.allclose(seq2.softmax(-1), photo.softmax(-1).mean(0), atol=1e-3)


def test_sharpness_moves_pooling_from_the_mean_to_the_most_confident_photo(tiny_model: SkinLesionNet) -> None:
    feats = torch.zeros(1, 3, FEATURE_DIM)
    logits = torch.tensor([[[4.0, 0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0]]])
    probs = logits.softmax(-1)[0]
    pooled = {}
    for sharpness in (0.0, 5.0, 200.0):
        tiny_model.sequence_sharpness.fill_(sharpness)
        with torch.no_grad():
            pooled[sharpness] = tiny_model.sequence_logits(feats, logits)[0].softmax(-1)
    assert torch.allclose(pooled[0.0], probs.mean(0), atol=1e-6)
    assert torch.allclose(pooled[200.0], probs[0], atol=1e-4)  # the clear photo decides
    # in between, the confident photo's class gains weight monotonically
    assert pooled[0.0][0] < pooled[5.0][0] < pooled[200.0][0]


def test_sequence_depends_on_photo_order_only_through_the_lstm(tiny_model: SkinLesionNet,
                                                               photos: torch.Tensor) -> None:
    reverse = photos.flip(0)
    with torch.no_grad():
        seq = tiny_model.forward_sequence(photos)[1]
        seq_rev = tiny_model.forward_sequence(reverse)[1]
    assert torch.allclose(seq, seq_rev, atol=1e-5)  # zero head: the mean ignores order
    _randomise_sequence_head(tiny_model)
    with torch.no_grad():
        seq = tiny_model.forward_sequence(photos)[1]
        seq_rev = tiny_model.forward_sequence(reverse)[1]
    assert not torch.allclose(seq, seq_rev, atol=1e-4)  # the LSTM reads them in time order


def test_padded_batch_matches_unpadded(tiny_model: SkinLesionNet) -> None:
    _randomise_sequence_head(tiny_model)
    torch.manual_seed(2)
    feats = torch.randn(3, 4, FEATURE_DIM)
    logits = torch.randn(3, 4, N_CLASSES)
    lengths = torch.tensor([4, 2, 1])
    for b, n in enumerate(lengths.tolist()):  # garbage in the padding must not matter
        feats[b, n:] = 1e3 * torch.randn_like(feats[b, n:])
        logits[b, n:] = 1e3
    with torch.no_grad():
        padded = tiny_model.sequence_logits(feats, logits, lengths)
        alone = [tiny_model.sequence_logits(feats[b:b + 1, :n], logits[b:b + 1, :n])[0]
                 for b, n in enumerate(lengths.tolist())]
    assert padded.shape == (3, N_CLASSES)
    for b in range(3):
        assert torch.allclose(padded[b], alone[b], atol=1e-5), b
    # the padding really was ignored: using it changes the answer
    with torch.no_grad():
        full = tiny_model.sequence_logits(feats[1:2], logits[1:2])[0]
    assert not torch.allclose(full, alone[1], atol=1e-2)


def test_deterministic_in_eval_mode(tiny_model: SkinLesionNet, photos: torch.Tensor) -> None:
    with torch.no_grad():
        pa, sa = tiny_model.forward_sequence(photos)
        pb, sb = tiny_model.forward_sequence(photos)
        feats = tiny_model.features(photos)
        a, b = tiny_model.photo_logits(feats), tiny_model.photo_logits(feats)
    assert torch.equal(pa, pb) and torch.equal(sa, sb) and torch.equal(a, b)
    # in training mode dropout makes two passes of the heads differ
    tiny_model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        c, d = tiny_model.photo_logits(feats), tiny_model.photo_logits(feats)
    assert not torch.allclose(c, d)


def test_meta_correction_is_zero_without_context(tiny_model: SkinLesionNet) -> None:
    torch.manual_seed(4)
    feats = torch.randn(5, FEATURE_DIM)
    with torch.no_grad():
        plain = tiny_model.photo_logits(feats)
        zeros = tiny_model.photo_logits(feats, torch.zeros(5, META_DIM))
        known = tiny_model.photo_logits(feats, torch.as_tensor(np.stack([encode_metadata(60, "male", "back")] * 5)))
    assert torch.allclose(plain, zeros, atol=1e-6)
    assert not torch.allclose(plain, known, atol=1e-4)
    # the context shifts every photo by the same amount
    shift = known - plain
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)


def test_calibration_buffers_apply(tiny_model: SkinLesionNet, photos: torch.Tensor) -> None:
    with torch.no_grad():
        raw = tiny_model(photos)
        bias = torch.arange(N_CLASSES, dtype=torch.float32)
        tiny_model.photo_temperature.fill_(2.0)
        tiny_model.photo_bias.copy_(bias)
        assert torch.allclose(tiny_model(photos), raw / 2 + bias, atol=1e-5)
        # the sequence head has its own calibration
        tiny_model.sequence_temperature.fill_(4.0)
        photo, seq = tiny_model.forward_sequence(photos)
        pooled = photo.softmax(-1).mean(0).log()  # pooled from the calibrated photo probabilities
        assert torch.allclose(seq, pooled / 4, atol=1e-5)


def test_cam_layer_is_the_last_block(tiny_model: SkinLesionNet) -> None:
    lite = SkinLesionNet(backbone="efficientnet-lite0", pretrained=False)
    assert lite.cam_layer is lite.encoder._blocks[-1]
    assert lite.cam_layer in set(lite.modules())
    # a registered backbone names its own last block
    assert tiny_model.cam_layer is tiny_model.encoder.blocks[-1]
    assert tiny_model.cam_layer in set(tiny_model.modules())


def _imagenet_batch() -> torch.Tensor:
    def prep(arr: np.ndarray) -> torch.Tensor:
        img = Image.fromarray(arr).convert("RGB").resize((224, 224), Image.BILINEAR)
        x = torch.as_tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)
        return x / 127.5 - 1.0  # mean = std = 0.5

    return torch.stack([prep(skdata.chelsea()), prep(skdata.coffee())])


def test_backbone_imagenet_weights_are_real() -> None:
    x = _imagenet_batch()
    net = build_backbone(image_size=224, pretrained=True).eval()
    with torch.no_grad():
        top5 = net(x).topk(5).indices.tolist()
    assert top5[0][0] in CAT_CLASSES, top5[0]
    assert COFFEE_CLASSES & set(top5[1]), top5[1]

    torch.manual_seed(0)
    random = build_backbone(image_size=224, pretrained=False).eval()
    with torch.no_grad():
        top5_random = random(x).topk(5).indices.tolist()
    assert top5_random[0][0] not in CAT_CLASSES
    assert not COFFEE_CLASSES & set(top5_random[1])


def test_pretrained_skin_model_starts_from_imagenet() -> None:
    model = SkinLesionNet(pretrained=True)
    reference = build_backbone(pretrained=True).state_dict()
    own = model.encoder.state_dict()
    assert torch.equal(own["_conv_stem.weight"], reference["_conv_stem.weight"])
    assert torch.equal(own["_blocks.15._project_conv.weight"], reference["_blocks.15._project_conv.weight"])
    assert "_fc.weight" not in own  # the ImageNet classifier is replaced by the skin heads
