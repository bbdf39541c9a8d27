"""The serving engine: the weights' graphs on ONNX Runtime give what torch gives, are verified by
checksum, follow the weights they were exported from, and serve without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from skin_model.cli import main
from skin_model.constants import CARD_FILE, CLASSES, ONNX_PHOTO_FILE, ONNX_SEQUENCE_FILE
from skin_model.model import checkpoint
from skin_model.model.files import WeightsError, read_card, write_card
from skin_model.predict import Prediction, load_predictor

REPO = Path(__file__).resolve().parents[2]


def values(photos: list[dict[str, float]]) -> np.ndarray:
    return np.array([[p[c] for c in CLASSES] for p in photos])


def agree(a: Prediction, b: Prediction, atol: float) -> None:
    """Same probabilities within atol, and the same decision, refusal and sequence for every photo."""
    np.testing.assert_allclose(values(a.photos), values(b.photos), atol=atol)
    for i in range(len(a.photos)):
        mine, theirs = a.decision(i), b.decision(i)
        assert (mine.status, mine.refer, mine.headline) == (theirs.status, theirs.refer, theirs.headline), i
        assert a.rejected(i) == b.rejected(i)
    assert a.sequence_photos == b.sequence_photos
    if a.sequence is not None:
        np.testing.assert_allclose(values([a.sequence]), values([b.sequence]), atol=atol)


def test_both_engines_give_the_same_predictions_sequences_and_context(tiny_weights: Path, lesion_photo) -> None:
    photos = [lesion_photo(centre=(0.3 + 0.1 * i, 0.5), seed=i) for i in range(4)]
    onnx, eager = load_predictor(tiny_weights, engine="onnx"), load_predictor(tiny_weights, engine="torch")
    assert (onnx.engine.name, eager.engine.name) == ("ONNX Runtime", "PyTorch")
    for context in ({}, {"age": 70.0, "sex": "male", "site": "back"}):
        agree(onnx.predict(photos, **context), eager.predict(photos, **context), atol=1e-5)
    assert onnx.predict(photos).sequence is not None
    agree(onnx.predict_each(photos * 20, batch_size=16), eager.predict_each(photos * 20), atol=1e-5)
    assert onnx.sequence_method == eager.sequence_method


def test_the_shipped_graphs_match_pytorch_on_20_real_photos(ham_dir: Path) -> None:
    """Issue #15's check: max absolute difference of probabilities <= 1e-4 on 20 real photos, same decisions."""
    from skin_model.io.images import load_image

    paths = sorted((ham_dir / "images").glob("*.jpg"))[::500][:20]
    assert len(paths) == 20
    photos = [load_image(p) for p in paths]
    onnx, eager = load_predictor(engine="onnx"), load_predictor(engine="torch")
    a, b = onnx.predict_each(photos), eager.predict_each(photos)
    assert np.abs(values(a.photos) - values(b.photos)).max() <= 1e-4
    assert [a.decision(i).headline for i in range(20)] == [b.decision(i).headline for i in range(20)]
    agree(onnx.predict(photos[:5]), eager.predict(photos[:5]), atol=1e-4)  # a sequence too


def copied(weights: Path, tmp_path: Path) -> Path:
    out = tmp_path / "weights"
    shutil.copytree(weights, out)
    return out


def test_altered_or_foreign_graphs_are_refused(tiny_weights: Path, tmp_path: Path) -> None:
    altered = copied(tiny_weights, tmp_path)
    with open(altered / ONNX_PHOTO_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(WeightsError, match="checksum mismatch for skin_model.onnx"):
        load_predictor(altered, engine="onnx")
    foreign = copied(tiny_weights, tmp_path / "b")
    card = read_card(foreign)
    write_card(foreign, replace(card, onnx=replace(card.onnx, weights_sha256="0" * 64)))
    with pytest.raises(WeightsError, match="other weights"):
        load_predictor(foreign, engine="onnx")


def test_weights_saved_without_graphs_are_served_by_torch(tiny_model, tmp_path: Path, lesion_photo) -> None:
    with_graphs = checkpoint.save(tiny_model, tmp_path, checkpoint.ModelCard(name="t"))
    assert with_graphs.onnx is not None and (tmp_path / ONNX_SEQUENCE_FILE).is_file()
    plain = checkpoint.save(tiny_model, tmp_path, checkpoint.ModelCard(name="t"), onnx=False)
    assert plain.onnx is None and not (tmp_path / ONNX_PHOTO_FILE).exists()  # no stale graph stays behind
    predictor = load_predictor(tmp_path)
    assert predictor.engine.name == "PyTorch" and predictor.predict([lesion_photo()]).photos
    with pytest.raises(WeightsError, match="no ONNX export"):
        load_predictor(tmp_path, engine="onnx")


def test_cli_export_writes_verified_graphs_of_the_weights(tiny_weights: Path, tmp_path: Path, capsys,
                                                          lesion_photo) -> None:
    folder = copied(tiny_weights, tmp_path)
    card = json.loads((folder / CARD_FILE).read_text())
    del card["onnx"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    (folder / ONNX_PHOTO_FILE).unlink()
    assert load_predictor(folder).engine.name == "PyTorch"
    assert main(["export", "--weights", str(folder)]) == 0
    assert "skin_model.onnx" in capsys.readouterr().out
    exported = read_card(folder)
    assert exported.onnx is not None and exported.onnx.weights_sha256 == exported.sha256
    served = load_predictor(folder)
    assert served.engine.name == "ONNX Runtime"
    agree(served.predict([lesion_photo()]), load_predictor(tiny_weights).predict([lesion_photo()]), atol=1e-6)


def output_without_helpers(code: str) -> list[str]:
    """The lines `code` prints in a fresh Python without the suite's helpers (they import torch)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_serving_loads_neither_torch_nor_grad_cam(tiny_weights: Path) -> None:
    """A prediction on ONNX Runtime (the app's and the CLI's) never imports torch: its import alone is
    about 500 MB of the app's memory. Run without the suite's helpers, which import torch."""
    code = ("import sys\nfrom PIL import Image\nfrom skin_model.predict import load_predictor\n"
            f"p = load_predictor({str(tiny_weights)!r})\n"
            "r = p.predict([Image.new('RGB', (200, 150), (200, 150, 120)), Image.new('RGB', (90, 60), (180, 90, 70))])\n"
            "print(p.engine.name, r.sequence is not None, len(p.sequence_method) > 0)\n"
            "print([m for m in ('torch', 'torchvision', 'pytorch_grad_cam', 'cv2', 'pandas') if m in sys.modules])")
    assert output_without_helpers(code) == ["ONNX Runtime True True", "[]"]


def test_the_torch_engine_scores_on_the_models_device(tiny_weights: Path, lesion_photo) -> None:
    predictor = load_predictor(tiny_weights, engine="torch", device=torch.device("cpu"))
    assert predictor.device_name.endswith("(PyTorch)")
    scores = predictor.engine.score(np.zeros((2, 3, 64, 64), np.float32), np.zeros((2, 18), np.float32))
    assert scores.shown.shape == (2, len(CLASSES)) and scores.feature_distance.shape == (2,)


@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained EfficientNet-Lite0 (no download) with a calibration, saved: its graphs include the
    heatmap graph, which the stub backbone of the other tests has no closed form for."""
    from helpers import build_tiny_model

    from skin_model.constants import BACKBONE

    model = build_tiny_model(backbone=BACKBONE)
    with torch.no_grad():
        model.photo_temperature.fill_(1.6)
        model.photo_bias.copy_(torch.linspace(-0.4, 0.5, 7))
    directory = tmp_path_factory.mktemp("lite")
    card = checkpoint.save(model, directory, checkpoint.ModelCard(name="lite"))
    assert card.onnx is not None and card.onnx.heatmap_file == "skin_model_heatmap.onnx"
    return directory


def test_served_heatmaps_are_pytorch_grad_cams_own(lite_weights: Path, lesion_photo) -> None:
    """Every method the app offers, for the class shown and for a class asked for: the heatmap drawn from
    the heatmap graph's activations and closed-form gradients equals pytorch-grad-cam's on the torch network
    (hooks and autograd), and the prediction beside it equals the photo graph's."""
    from skin_model.explain.methods import METHOD_NAMES

    photos = [lesion_photo(centre=(0.3 + 0.12 * i, 0.5), radii=(0.12 + 0.04 * i, 0.15), seed=i) for i in range(3)]
    served = load_predictor(lite_weights)
    assert served.engine.serves_heatmaps
    explainer = load_predictor(lite_weights, engine="torch").explainer
    for method in METHOD_NAMES:
        for target in (None, "mel"):
            analysis = served.analyse(photos, method=method, target=target, sequence=False)
            targets = [h.target for h in analysis.heatmaps]
            shown = [Prediction.top(p)[0] for p in analysis.prediction.photos]
            assert targets == ([target] * 3 if target else shown)
            reference = explainer.explain(photos, None, targets, method).heatmaps
            for mine, theirs in zip(analysis.heatmaps, reference):
                assert mine.cam.shape == theirs.cam.shape == (160, 160) and mine.method == method
                # random weights make larger activations than trained ones, and a class gradient that nearly
                # cancels: float rounding alone reaches 1e-4 of the map's range on AVX2 machines and 2e-3 on
                # AVX512 ones (ONNX Runtime and torch sum in other orders there); the maps still agree in shape
                np.testing.assert_allclose(mine.cam, theirs.cam, atol=2.5e-3)
                assert np.corrcoef(mine.cam.ravel(), theirs.cam.ravel())[0, 1] > 0.9999
            agree(analysis.prediction, served.predict(photos, sequence=False), atol=1e-6)
    assert not np.allclose(served.analyse(photos[:1], target="mel").heatmaps[0].cam,
                           served.analyse(photos[:1], target="nv").heatmaps[0].cam, atol=1e-3)


def test_the_shipped_heatmaps_match_pytorch_grad_cam_on_real_photos(ham_dir: Path) -> None:
    from skin_model.explain.methods import METHOD_NAMES
    from skin_model.io.images import load_image

    photos = [load_image(p) for p in sorted((ham_dir / "images").glob("*.jpg"))[::1000][:8]]
    served = load_predictor()
    explainer = load_predictor(engine="torch").explainer
    for method in METHOD_NAMES:
        analysis = served.analyse(photos, method=method, sequence=False)
        reference = explainer.explain(photos, None, [h.target for h in analysis.heatmaps], method).heatmaps
        assert max(float(np.abs(a.cam - b.cam).max()) for a, b in zip(analysis.heatmaps, reference)) <= 1e-4


def test_heatmaps_load_no_torch(lite_weights: Path) -> None:
    """The app's whole analysis, heatmaps included, on ONNX Runtime: torch never loads."""
    code = ("import sys\nfrom PIL import Image\nfrom skin_model.predict import load_predictor\n"
            f"p = load_predictor({str(lite_weights)!r})\n"
            "a = p.analyse([Image.new('RGB', (200, 150), (200, 150, 120))], method='Grad-CAM++', target='bcc')\n"
            "print(a.heatmaps[0].cam.shape, a.heatmaps[0].target)\n"
            "print([m for m in ('torch', 'pytorch_grad_cam', 'torchvision') if m in sys.modules])")
    assert output_without_helpers(code) == ["(160, 160) bcc", "[]"]


def test_heatmaps_can_be_loaded_before_the_first_photo(lite_weights: Path, tiny_weights: Path) -> None:
    """The app loads what heatmaps need at start: the heatmap graph, or the torch explainer for weights
    without a closed-form gradient (the stub backbone); folders (the CLI) never load either."""
    served = load_predictor(lite_weights)
    assert served.engine._heatmap is None  # not loaded by a plain load
    served.prepare_heatmaps()
    assert served.engine._heatmap is not None and served._explainer is None
    stub = load_predictor(tiny_weights)
    assert not stub.engine.serves_heatmaps
    stub.prepare_heatmaps()
    assert stub._explainer is not None
