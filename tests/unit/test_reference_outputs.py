"""What a user sees from the shipped weights does not change unnoticed: on 20 real HAM10000 photos they
give the probabilities (photos, photos with patient context, sequences) and the heatmaps (class, peak)
recorded in tests/data/reference_outputs.json by scripts/record_reference.py when the weights were last
written. (These weights' probabilities are still those the pre-redesign code, commit d486bd4, recorded:
re-recording after the out-of-distribution refit changed only the weights' checksum.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skin_model.io.images import load_image
from skin_model.model import checkpoint
from skin_model.predict import load_predictor

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "reference_outputs.json").read_text())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(ham_dir: Path) -> dict[str, object]:
    from skin_model.data.ham10000 import load_ham10000

    table = load_ham10000(ham_dir).table.set_index("image_id")
    return {i: load_image(table.loc[i, "path"]) for i in REFERENCE["image_ids"]}


@pytest.fixture(scope="module")
def predictor():
    card = checkpoint.read_card()
    if card.sha256 != REFERENCE["weights_sha256"]:
        pytest.fail("the shipped weights changed: check their figures, then record the reference again "
                    "with scripts/record_reference.py")
    return load_predictor(device="cpu")


def close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-5)


def test_photo_probabilities_unchanged(predictor, photos) -> None:
    ids = REFERENCE["image_ids"][:14]
    for i, before, before_context in zip(ids, REFERENCE["photos"], REFERENCE["context"]):
        close(predictor.predict([photos[i]]).photos[0], before)
        close(predictor.predict([photos[i]], age=55, sex="female", site="back").photos[0], before_context)


def test_sequence_probabilities_unchanged(predictor, photos) -> None:
    groups = [REFERENCE["image_ids"][14:16], REFERENCE["image_ids"][16:18], REFERENCE["image_ids"][18:20]]
    for ids, before in zip(groups, REFERENCE["sequences"]):
        now = predictor.predict([photos[i] for i in ids])
        for a, b in zip(now.photos, before["photos"]):
            close(a, b)
        close(now.sequence, before["sequence"])


def test_heatmaps_explain_the_same_classes_at_the_same_places(predictor, photos) -> None:
    analysis = predictor.analyse([photos[i] for i in REFERENCE["image_ids"][:4]], sequence=False, method="Grad-CAM")
    assert [h.target for h in analysis.heatmaps] == REFERENCE["heatmap_targets"]
    np.testing.assert_allclose([h.peak() for h in analysis.heatmaps], REFERENCE["heatmap_peaks"], atol=1e-6)
    for a, b in zip(analysis.prediction.photos, REFERENCE["photos"][:4]):
        close(a, b)
