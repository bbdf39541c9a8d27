"""skin_model.predict: the prediction API on the tiny test weights."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_tiny_model
from PIL import Image

from skin_model import devices
from skin_model.constants import CLASSES, MAX_SEQUENCE
from skin_model.explain.cam import METHODS
from skin_model.io.images import ImageError
from skin_model.model.card import ModelCard
from skin_model.predict import DEFAULT_INCONCLUSIVE_BELOW, Prediction, Predictor, load_predictor


@pytest.fixture(scope="module")
def predictor(tiny_weights: Path) -> Predictor:
    return load_predictor(tiny_weights, device="cpu")


@pytest.fixture
def three(lesion_photo) -> list[Image.Image]:
    return [lesion_photo(), lesion_photo(centre=(0.3, 0.7), radii=(0.1, 0.1), seed=1),
            lesion_photo(centre=(0.7, 0.3), radii=(0.3, 0.3), lesion=(150, 40, 40), seed=2)]


def _values(probs: dict[str, float]) -> np.ndarray:
    assert tuple(probs) == CLASSES
    return np.array([probs[c] for c in CLASSES])


def test_loads_on_cpu_in_eval_mode(predictor: Predictor) -> None:
    assert predictor.engine.name == "ONNX Runtime"  # the weights carry their export: served without torch
    assert not predictor.model.training and next(predictor.model.parameters()).device == torch.device("cpu")
    assert isinstance(predictor.card, ModelCard) and predictor.card.name == "test"
    assert predictor.device_name.startswith("CPU")
    assert predictor.inconclusive_below == DEFAULT_INCONCLUSIVE_BELOW


def test_one_photo(predictor: Predictor, lesion_photo) -> None:
    result = predictor.predict([lesion_photo()])
    assert isinstance(result, Prediction)
    assert result.sequence is None
    assert len(result.photos) == 1
    p = _values(result.photos[0])
    assert p.sum() == pytest.approx(1.0, abs=1e-5)
    assert (p > 0).all() and (p < 1).all()
    # the probabilities are the softmax of the model's logits
    from skin_model.engine import preprocess

    with torch.no_grad():
        expected = predictor.model(preprocess([lesion_photo()])).softmax(-1)[0].numpy()
    assert np.allclose(p, expected, atol=1e-6)


def test_three_photos_give_a_sequence(predictor: Predictor, three: list[Image.Image]) -> None:
    result = predictor.predict(three)
    assert len(result.photos) == 3
    assert result.sequence is not None
    seq = _values(result.sequence)
    assert seq.sum() == pytest.approx(1.0, abs=1e-5)
    # the untrained sequence head adds nothing: the sequence is the mean of the photos' probabilities
    assert np.allclose(seq, np.stack([_values(p) for p in result.photos]).mean(0), atol=1e-5)
    d = result.to_dict()
    assert d["classes"] == list(CLASSES) and d["photos"] == result.photos and d["sequence"] == result.sequence


def test_sequence_flag(predictor: Predictor, three: list[Image.Image]) -> None:
    # one photo is a photo, not a "sequence over 1 photos", even when a sequence is asked for
    assert predictor.predict(three[:1], sequence=True).sequence is None
    assert predictor.predict(three[:2], sequence=True).sequence is not None
    assert predictor.predict(three, sequence=False).sequence is None


def test_sequence_reads_the_last_max_sequence_photos(predictor: Predictor, three: list[Image.Image]) -> None:
    many = [three[0]] * 3 + [three[1], three[2]] * (MAX_SEQUENCE // 2)
    assert len(many) > MAX_SEQUENCE
    long = predictor.predict(many).sequence
    tail = predictor.predict(many[-MAX_SEQUENCE:]).sequence
    assert np.allclose(_values(long), _values(tail), atol=1e-5)
    assert not np.allclose(_values(long), _values(predictor.predict(many[:MAX_SEQUENCE]).sequence), atol=1e-4)


def test_predict_each_equals_each_photo_alone(predictor: Predictor, three: list[Image.Image]) -> None:
    together = predictor.predict_each(three, batch_size=2)
    assert isinstance(together, Prediction) and together.sequence is None
    together = together.photos
    alone = [predictor.predict([photo]).photos[0] for photo in three]
    assert len(together) == 3
    for a, b in zip(together, alone):
        assert np.allclose(_values(a), _values(b), atol=1e-5)
    # and the photos really differ, so the comparison means something
    assert not np.allclose(_values(alone[0]), _values(alone[2]), atol=1e-3)


def test_accepts_paths_bytes_and_non_rgb_images(predictor: Predictor, lesion_photo, tmp_path: Path) -> None:
    photo = lesion_photo()
    path = tmp_path / "photo.png"
    photo.save(path)
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    rgba = photo.convert("RGBA")
    results = predictor.predict_each([photo, path, str(path), buf.getvalue(), rgba]).photos
    for r in results[1:]:
        assert np.allclose(_values(r), _values(results[0]), atol=1e-6)


def test_bad_inputs(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="no photos"):
        predictor.predict([])
    with pytest.raises(ImageError, match="empty"):
        predictor.predict([b""])


def test_patient_context(predictor: Predictor, lesion_photo) -> None:
    photo = [lesion_photo()]
    base = _values(predictor.predict(photo).photos[0])
    for absent in ({"age": None, "sex": None, "site": None}, {"sex": "", "site": ""}):
        assert np.array_equal(_values(predictor.predict(photo, **absent).photos[0]), base)
    # unknown values encode as zeros: no correction
    unknown = _values(predictor.predict(photo, sex="unknown", site="unknown").photos[0])
    assert np.allclose(unknown, base, atol=1e-6)
    # known context goes through the (randomly initialised) patient-context head
    known = _values(predictor.predict(photo, age=70, sex="male", site="back").photos[0])
    assert not np.allclose(known, base, atol=1e-4)
    assert known.sum() == pytest.approx(1.0, abs=1e-5)


def test_heatmap_explains_the_class_shown_with_patient_context(lesion_photo) -> None:
    """With age, sex and site, each photo's heatmap from `analyse` explains the class shown for that photo. The
    context head is set so that the context changes every photo's class: a heatmap from a forward without the
    context (as it once was) would explain another class than the verdict above it."""
    model = build_tiny_model()
    predictor = Predictor.from_model(model, ModelCard(name="test"))
    photos = [lesion_photo(), lesion_photo(centre=(0.3, 0.7), radii=(0.1, 0.1), seed=1)]
    plain = [Prediction.top(p)[0] for p in predictor.predict(photos).photos]
    pushed = next(c for c in CLASSES if c not in plain)
    with torch.no_grad():  # any known context adds a large logit to `pushed`
        model.meta_head[0].weight.fill_(1.0)
        model.meta_head[0].bias.zero_()
        model.meta_head[2].weight.zero_()
        model.meta_head[2].weight[CLASSES.index(pushed)] = 1.0
    context = {"age": 70.0, "sex": "male", "site": "back"}
    verdicts = [Prediction.top(p)[0] for p in predictor.predict(photos, **context).photos]
    assert verdicts == [pushed] * len(photos)
    for method in METHODS:
        analysis = predictor.analyse(photos, method=method, **context)
        assert [Prediction.top(p)[0] for p in analysis.prediction.photos] == verdicts
        assert [h.target for h in analysis.heatmaps] == verdicts, method


def test_device_from_environment(tiny_weights: Path, monkeypatch) -> None:
    monkeypatch.setenv("SKIN_MODEL_DEVICE", "cpu")
    assert load_predictor(tiny_weights).device_name.startswith("CPU")
    monkeypatch.setenv("SKIN_MODEL_ENGINE", "torch")
    assert next(load_predictor(tiny_weights).model.parameters()).device == torch.device("cpu")
    monkeypatch.delenv("SKIN_MODEL_ENGINE")
    # the variable wins over an available accelerator
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.select_device() == torch.device("cpu")
    monkeypatch.delenv("SKIN_MODEL_DEVICE")
    assert devices.select_device() == torch.device("cuda")


def test_cuda_requested_but_unavailable(tiny_weights: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_predictor(tiny_weights, device="cuda")
    monkeypatch.setenv("SKIN_MODEL_DEVICE", "cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_predictor(tiny_weights)


def test_explicit_torch_device_and_engine(tiny_weights: Path) -> None:
    on_torch = load_predictor(tiny_weights, device=torch.device("cpu"), engine="torch")
    assert on_torch.engine.name == "PyTorch" and on_torch.device_name.endswith("(PyTorch)")
    assert load_predictor(tiny_weights, device=torch.device("cpu")).engine.name == "ONNX Runtime"
    with pytest.raises(ValueError, match="unknown engine"):
        load_predictor(tiny_weights, engine="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_predictor(tiny_weights, device="cuda", engine="onnx")


def test_prediction_helpers() -> None:
    probs = {c: 0.0 for c in CLASSES} | {"mel": 0.45, "nv": 0.4, "bkl": 0.15}
    pred = Prediction(photos=[probs], sequence=None)
    assert Prediction.top(probs) == ("mel", 0.45)
    assert pred.is_inconclusive(probs)
    assert not Prediction(photos=[probs], sequence=None, inconclusive_below=0.4).is_inconclusive(probs)


def test_inconclusive_threshold_from_card(tiny_weights: Path, lesion_photo) -> None:
    predictor = load_predictor(tiny_weights, device="cpu")
    predictor.card = replace(predictor.card, trust=replace(predictor.card.trust, inconclusive_below=0.3))
    assert predictor.inconclusive_below == 0.3
    assert predictor.predict([lesion_photo()]).inconclusive_below == 0.3


def test_sequence_method_describes_the_fitted_pooling(tiny_weights: Path, three) -> None:
    predictor = load_predictor(tiny_weights, engine="torch")  # the pooling is changed in memory below
    model = predictor.model
    saved = float(model.sequence_sharpness), float(model.sequence_mix)
    try:
        model.sequence_sharpness.fill_(0.0)
        model.sequence_mix.fill_(0.0)
        assert predictor.sequence_method == "the mean of the photos' probabilities"
        assert not predictor.sequence_uses_lstm
        model.sequence_sharpness.fill_(10.0)
        assert "clearer (more confident) photos weighing more" in predictor.sequence_method
        assert "LSTM" not in predictor.sequence_method
        model.sequence_mix.fill_(0.5)
        assert predictor.sequence_uses_lstm
        assert predictor.sequence_method.endswith("corrected by an LSTM that reads them in time order")
        assert predictor.predict(three).sequence_method == predictor.sequence_method  # reports quote it
        assert predictor.predict(three[:1]).sequence_method is None
    finally:
        model.sequence_sharpness.fill_(saved[0])
        model.sequence_mix.fill_(saved[1])


def test_the_sequence_caption_says_exactly_what_is_shown(tiny_weights: Path, three) -> None:
    """A caption that says "the mean" must show the mean: with a fitted sequence temperature
    the numbers differ from the mean, and the caption says so."""
    predictor = load_predictor(tiny_weights, engine="torch")  # the pooling is changed in memory below
    model = predictor.model
    saved = float(model.sequence_temperature), float(model.sequence_sharpness), float(model.sequence_mix)
    try:
        model.sequence_sharpness.fill_(0.0)
        model.sequence_mix.fill_(0.0)
        plain = predictor.predict(three)
        mean = np.stack([_values(plain.photos[i]) for i in plain.sequence_photos]).mean(0)
        assert plain.sequence_method == "the mean of the photos' probabilities"
        assert np.allclose(_values(plain.sequence), mean, atol=1e-5)
        model.sequence_temperature.fill_(0.7)
        sharpened = predictor.predict(three)
        assert not np.allclose(_values(sharpened.sequence), mean, atol=1e-3)
        assert "recalibrated on validation lesions (temperature 0.70)" in sharpened.sequence_method
        assert sharpened.sequence_method.endswith("so it is not exactly that mean")
    finally:
        model.sequence_temperature.fill_(saved[0])
        model.sequence_sharpness.fill_(saved[1])
        model.sequence_mix.fill_(saved[2])


def test_photo_probabilities_follow_the_fitted_confidence_map(tiny_weights: Path, three) -> None:
    predictor = load_predictor(tiny_weights, device="cpu", engine="torch")  # the map is changed in memory below
    before = predictor.predict(three)
    with torch.no_grad():
        predictor.model.photo_confidence.fill_(0.3)  # "at any confidence, right 30% of the time"
    after = predictor.predict(three)
    for b, a in zip(before.photos, after.photos):
        assert Prediction.top(a)[0] == Prediction.top(b)[0]  # same decision
        p1, p2 = sorted(b.values())[-1], sorted(b.values())[-2]
        assert Prediction.top(a)[1] == pytest.approx(max(0.3, p2 / (1 - p1 + p2)), abs=1e-4)
        assert sum(a.values()) == pytest.approx(1.0, abs=1e-5)
    # the sequence pools the photos' probabilities as shown (here: their plain mean)
    model = predictor.model
    with torch.no_grad():
        model.sequence_mix.fill_(0.0)
        model.sequence_sharpness.fill_(0.0)
        model.sequence_temperature.fill_(1.0)
        model.sequence_bias.zero_()
    pooled = predictor.predict(three)
    assert _values(pooled.sequence) == pytest.approx(np.mean([_values(p) for p in pooled.photos], axis=0), abs=1e-5)
