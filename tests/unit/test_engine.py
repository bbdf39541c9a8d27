"""One inference engine: the probability a user sees is defined in one place (the served graph),
computed alike by both engines (ONNX Runtime and torch), and agrees with evaluation and training."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skin_model import engine
from skin_model.data.preprocess import encode_metadata
from skin_model.evaluation.evaluate import calibrated_probs, lesion_sequence_logits, photo_outputs
from skin_model.model import checkpoint
from skin_model.predict import Predictor, load_predictor
from skin_model.training.stages import features_of, photo_logits_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["onnx", "torch"])
def predictor(request: pytest.FixtureRequest, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Predictor:
    """The tiny model with a calibration that changes every probability (temperature, prior
    correction, a confidence map that is not the identity), so paths that skip a step differ;
    saved (so its ONNX graphs hold that calibration) and served by each engine in turn."""
    model, card = checkpoint.load(tiny_weights)
    with torch.no_grad():
        model.photo_temperature.fill_(1.7)
        model.photo_bias.copy_(torch.linspace(-0.5, 0.6, 7))
        model.photo_confidence.copy_(torch.linspace(0.3, 0.9, model.photo_confidence.numel()))
        model.sequence_temperature.fill_(0.8)
        model.sequence_bias.copy_(torch.linspace(0.3, -0.3, 7))
        model.sequence_sharpness.fill_(5.0)
    directory = tmp_path_factory.mktemp("calibrated")
    checkpoint.save(model, directory, card)
    return load_predictor(directory, engine=request.param)


@pytest.fixture(scope="module")
def photos(lesion_photo) -> list[Image.Image]:
    return [lesion_photo(centre=(0.3 + 0.1 * i, 0.5), radii=(0.1 + 0.03 * i, 0.15), seed=i) for i in range(4)]


def rows(prediction_photos: list[dict[str, float]]) -> np.ndarray:
    return np.array([list(p.values()) for p in prediction_photos])


def test_predictor_evaluation_training_and_calibration_show_the_same_probabilities(predictor, photos) -> None:
    model = predictor.model
    shown = rows(predictor.predict(photos, sequence=False).photos)
    analysed = rows(predictor.analyse(photos, sequence=False).prediction.photos)
    _, logits = photo_outputs(model, photos)
    evaluated = calibrated_probs(model, logits, "photo")
    batch = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos])
    trained = engine.shown_probabilities(model, photo_logits_of(model, features_of(model, batch, torch.device("cpu")),
                                                                torch.device("cpu"))).numpy()
    assert not np.allclose(shown, torch.softmax(torch.as_tensor(logits), -1).numpy(), atol=1e-3), \
        "the calibration must matter, or this test could not tell the paths apart"
    np.testing.assert_allclose(analysed, shown, atol=1e-5)
    np.testing.assert_allclose(evaluated, shown, atol=1e-6)
    np.testing.assert_allclose(trained, shown, atol=1e-4)  # channels-last batches: float rounding only


def test_sequence_and_patient_context_agree_everywhere(predictor, photos) -> None:
    model = predictor.model
    pred = predictor.predict(photos)
    feats, logits = photo_outputs(model, photos)
    evaluated = calibrated_probs(model, lesion_sequence_logits(model, feats, logits, [np.arange(len(photos))]),
                                 "sequence")[0]
    np.testing.assert_allclose(list(pred.sequence.values()), evaluated, atol=1e-6)
    assert pred.sequence_photos == list(range(len(photos)))
    context = {"age": 70.0, "sex": "male", "site": "back"}
    with_context = rows(predictor.predict(photos, sequence=False, **context).photos)
    meta = np.repeat(encode_metadata(**context)[None], len(photos), axis=0)
    _, logits_meta = photo_outputs(model, photos, meta=meta)
    np.testing.assert_allclose(calibrated_probs(model, logits_meta, "photo"), with_context, atol=1e-6)
    from_features = engine.context_logits(model, feats, meta).numpy()  # the evaluation's shared forward
    assert not np.allclose(logits_meta, logits, atol=1e-4), "the context must change the logits"
    np.testing.assert_allclose(from_features, logits_meta, atol=1e-5)
    np.testing.assert_allclose(rows(predictor.analyse(photos, sequence=False, **context).prediction.photos),
                               with_context, atol=1e-5)


def test_shown_probabilities_are_assembled_only_in_the_engine() -> None:
    """Outside the engine, the served graph and the network that defines them, nobody calls the
    calibration or the confidence map itself."""
    allowed = {REPO / "skin_model" / "engine.py", REPO / "skin_model" / "model" / "network.py",
               REPO / "skin_model" / "model" / "serving.py"}
    callers = []
    for path in sorted((REPO / "skin_model").rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("calibrated", "photo_probabilities", "remap_confidence")):
                callers.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.attr}")
    assert callers == []


def count_encoder_forwards(model: torch.nn.Module) -> tuple[list[int], list]:
    """Batch sizes of every forward of the model's encoder(s) (main and members)."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: sizes.append(int(args[0].shape[0])))
             for name, m in model.named_modules() if name.endswith("encoder")]
    return sizes, hooks


def test_heatmaps_cost_one_torch_forward_and_explain_the_class_shown(predictor, photos) -> None:
    """The explainer runs one forward (and backward) for all photos; the prediction comes from the
    engine (no torch forward at all on ONNX Runtime), and each heatmap explains its photo's shown class."""
    serving_sizes, serving_hooks = count_encoder_forwards(predictor.model)
    cam_sizes, cam_hooks = count_encoder_forwards(predictor.explainer._model)
    try:
        analysis = predictor.analyse(photos[:3], age=40.0)
    finally:
        for hook in serving_hooks + cam_hooks:
            hook.remove()
    served = [] if predictor.engine.name == "ONNX Runtime" else [3]
    assert serving_sizes == served and cam_sizes == [3], (serving_sizes, cam_sizes)
    assert len(analysis.heatmaps) == 3 and analysis.prediction.sequence is not None
    shown = [max(p, key=p.get) for p in analysis.prediction.photos]
    assert [h.target for h in analysis.heatmaps] == shown, "each heatmap explains the class the user is shown"


def test_heatmap_for_a_chosen_class_keeps_the_prediction(predictor, photos) -> None:
    plain = predictor.predict(photos[:2])
    analysis = predictor.analyse(photos[:2], target="mel", method="Grad-CAM++")
    assert [h.target for h in analysis.heatmaps] == ["mel", "mel"]
    assert {h.method for h in analysis.heatmaps} == {"Grad-CAM++"}
    np.testing.assert_allclose(rows(analysis.prediction.photos), rows(plain.photos), atol=1e-5)
    np.testing.assert_allclose(list(analysis.prediction.sequence.values()), list(plain.sequence.values()), atol=1e-5)
    with pytest.raises(ValueError, match="unknown class"):
        predictor.analyse(photos[:1], target="melanoma")
