"""skin_model.interop.pdf.pdf_report and `skin-model predict --pdf/--csv` (folders, bad files)."""

from __future__ import annotations

import csv
import datetime
import io
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import QUALITY_ONLY_OOD, build_tiny_model, make_lesion_photo, refused
from PIL import Image, ImageDraw

from skin_model.cli import main
from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER, MALIGNANT
from skin_model.explain.heatmap import Heatmap
from skin_model.interop.pdf import pdf_report
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard, TrustSettings
from skin_model.predict import Prediction
from skin_model.trust.triage import TriageRule

pypdf = pytest.importorskip("pypdf")

CARD = ModelCard(name="tiny test model", sha256="0123456789abcdef" * 4)


def photo(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, (226, 178, 152))
    w, h = size
    ImageDraw.Draw(img).ellipse((w * 0.3, h * 0.25, w * 0.7, h * 0.75), fill=(90 + 10 * seed, 58, 36))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def probs(top: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return {c: (p if c == top else rest) for c in CLASSES}


def pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    text = " ".join(page.extract_text() for page in reader.pages)
    return len(reader.pages), re.sub(r"\s+", " ", text)


def test_single_photo_report_has_disclaimer_classes_and_checksum() -> None:
    pred = Prediction(photos=[probs("mel", 0.7)], sequence=None)
    data = pdf_report(pred, [photo(0)], ["lesion.jpg"], CARD, heatmaps=[_heatmap("mel", "Grad-CAM")],
                      dates=[datetime.date(2021, 5, 6)])
    assert data.startswith(b"%PDF")
    pages, text = pdf_text(data)
    assert pages >= 1
    assert DISCLAIMER in text
    for name in CLASS_NAMES.values():
        assert name in text
    assert CARD.sha256 in text and "tiny test model" in text
    assert "Most likely Melanoma (70.0%)" in text and "yes (!)" in text
    assert "lesion.jpg (2021-05-06)" in text and "Heatmap" in text
    assert "Evolution" not in text and "Sequence prediction" not in text


def test_several_photos_have_sequence_chart_and_marks() -> None:
    pred = Prediction(photos=[probs("nv", 0.8), probs("nv", 0.45), probs("mel", 0.6)],
                      sequence=probs("mel", 0.55), sequence_method="the mean of the photos' probabilities")
    names = ["2019.jpg", "2020 \u2014 b\u00e9.png", "2021.jpg"]  # a dash outside Latin-1 must not break the PDF
    data = pdf_report(pred, [photo(i, (300, 200)) for i in range(3)], names, CARD,
                      dates=[datetime.date(2019, 1, 1), None, datetime.date(2021, 1, 1)])
    pages, text = pdf_text(data)
    assert pages >= 2
    assert "Sequence prediction (3 photos" in text and "Evolution across visits" in text
    assert "How the photos are combined: the mean of the photos' probabilities." in " ".join(text.split())
    assert "2019-01-01" in text and "visit 2" in text
    assert "Inconclusive: top class Melanocytic nevus at 45.0%" in text  # photo 2 (45% < 50%)
    assert text.count("yes (!)") == len(MALIGNANT) * 4  # sequence table + three photo tables
    assert "2020 - b\u00e9.png" in text


def test_out_of_distribution_photo_gets_no_table() -> None:
    pred = Prediction(photos=[probs("bkl", 0.9), probs("df", 0.9)], sequence=None, ood=refused(2, {1: "blur"}))
    assert pred.status(1) == "out_of_distribution"
    _, text = pdf_text(pdf_report(pred, [photo(0), photo(1)], ["a.jpg", "b.jpg"], CARD))
    assert "Not assessed: this image is too blurred" in text
    assert "Dermatofibroma (90.0%)" not in text and "Most likely Benign keratosis-like lesion (90.0%)" in text


RULE = TriageRule(threshold=0.25, malignant=tuple(sorted(MALIGNANT)), sensitivity=0.91, specificity=0.74)


def test_a_malignant_possibility_leads_the_report() -> None:
    """The HAM_0000492 case: a nevus on top with melanoma close behind is a referral, in the sequence's
    headline and the photo's, not "Most likely: Melanocytic nevus"."""
    worrying = {**probs("nv", 0.52), "mel": 0.46, "bcc": 0.005, "akiec": 0.005, "bkl": 0.004, "df": 0.003, "vasc": 0.003}
    pred = Prediction(photos=[worrying, probs("nv", 0.97)], sequence=worrying, sequence_photos=[0, 1],
                      sequence_method="the mean of the photos' probabilities", triage=RULE)
    _, text = pdf_text(pdf_report(pred, [photo(0), photo(1)], ["a.jpg", "b.jpg"], CARD))
    assert text.count("Possibly melanoma (46.0%): see a dermatologist") == 2  # the sequence and photo 1
    assert "Most likely Melanocytic nevus (52.0%)" not in text
    assert "Most likely Melanocytic nevus (97.0%)" in text  # photo 2: below the triage threshold
    assert "sensitivity 91%, specificity 74%" in text and "at least 25.0%" in text
    assert "sensitivity >= 90%" in text and "?" not in text  # Latin-1 fonts: no character lost


def test_mismatched_lengths_are_refused() -> None:
    pred = Prediction(photos=[probs("nv", 0.9)], sequence=None)
    with pytest.raises(ValueError):
        pdf_report(pred, [photo(0), photo(1)], ["a", "b"], CARD)
    with pytest.raises(ValueError):
        pdf_report(pred, [photo(0)], ["a"], CARD, heatmaps=[None, None])


def test_cli_folder_with_pdf_and_csv(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "visits"
    folder.mkdir()
    for i, name in enumerate(["b_2020.jpg", "a_2019.png", "c_2021.jpg"]):
        photo(i).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out_pdf, out_csv = tmp_path / "report.pdf", tmp_path / "scores.csv"
    code = main(["predict", str(folder), "--sequence", "--weights", str(tiny_weights), "--device", "cpu",
                 "--pdf", str(out_pdf), "--csv", str(out_csv)])
    captured = capsys.readouterr()
    assert code == 2  # the broken file is reported, the others are still scored
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    assert "\nsequence of 3 photos: " in captured.out  # the broken file is not one of them

    rows = list(csv.DictReader(out_csv.open()))
    assert [Path(r["file"]).name for r in rows] == ["a_2019.png", "b_2020.jpg", "c_2021.jpg"]  # sorted
    assert list(rows[0]) == ["file", "decision", "see_dermatologist", "p_malignant", "prediction", "class_name",
                             "inconclusive", "status", "message", *(f"p_{c}" for c in CLASSES)]
    for row in rows:
        p = {c: float(row[f"p_{c}"]) for c in CLASSES}
        assert abs(sum(p.values()) - 1) < 1e-4
        assert row["prediction"] == max(p, key=p.get) and row["class_name"] == CLASS_NAMES[row["prediction"]]
        assert row["inconclusive"] == str(max(p.values()) < 0.5).lower()

    data = out_pdf.read_bytes()
    assert data.startswith(b"%PDF")
    _, text = pdf_text(data)
    assert DISCLAIMER in text and "Sequence prediction (3 photos" in text and "Heatmap: Grad-CAM for " in text
    assert "opacity 45%" in text  # the CLI draws at the report's default opacity, and says so
    assert "broken.jpg" not in text


def test_cli_no_readable_photo_writes_nothing(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    out_pdf = tmp_path / "r.pdf"
    assert main(["predict", str(bad), "--weights", str(tiny_weights), "--pdf", str(out_pdf)]) == 2
    assert not out_pdf.exists()
    assert "no report was written" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--weights", str(tiny_weights)]) == 2
    assert "holds no images" in capsys.readouterr().err


def _heatmap(target: str, method: str) -> Heatmap:
    """A heatmap hot in the photo's top-left corner."""
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:4, :4] = 1.0
    return Heatmap(cam=cam, target=target, method=method)


def test_heatmap_caption_states_what_is_drawn() -> None:
    """The caption names the method, the class explained and the opacity shown (it used to say "Grad-CAM,
    predicted class" whatever was drawn), and the overlay is drawn at that opacity."""
    pred = Prediction(photos=[probs("nv", 0.8)], sequence=None)
    picture, heat = photo(0), _heatmap("mel", "LayerCAM")
    data = pdf_report(pred, [picture], ["lesion.jpg"], CARD, heatmaps=[heat], opacity=0.8)
    _, text = pdf_text(data)
    assert "LayerCAM" in text and "Grad-CAM" not in text
    assert "Melanoma (mel)" in text and "opacity 80%" in text
    embedded = [np.asarray(i.image.convert("RGB"), dtype=np.float32) for i in pypdf.PdfReader(io.BytesIO(data)).pages[0].images]
    drawn = [e for e in embedded if e.shape[:2] == (picture.height, picture.width)]
    overlay = np.asarray(heat.overlay(picture, 0.8), dtype=np.float32)
    assert len(drawn) == 2 and min(np.abs(e - overlay).mean() for e in drawn) < 3.0  # JPEG noise only
    _, default = pdf_text(pdf_report(pred, [picture], ["lesion.jpg"], CARD,
                                     heatmaps=[_heatmap("nv", "Grad-CAM++")]))
    assert "Grad-CAM++" in default and "Melanocytic nevus (nv), the most likely class" in default


def test_refused_photo_gets_no_heatmap() -> None:
    pred = Prediction(photos=[probs("nv", 0.9)], sequence=None, ood=refused(1, {0: "blank"}))
    data = pdf_report(pred, [photo(0)], ["a.jpg"], CARD, heatmaps=[_heatmap("nv", "Grad-CAM")])
    assert "Heatmap" not in pdf_text(data)[1]
    assert len(pypdf.PdfReader(io.BytesIO(data)).pages[0].images) == 1  # the photo alone


def test_dates_not_read_from_the_file_are_marked() -> None:
    """A date the user typed in is marked wherever the report shows it; a photo without a date is a visit
    number, never a made-up date."""
    pred = Prediction(photos=[probs("nv", 0.8), probs("nv", 0.7), probs("mel", 0.6)], sequence=probs("nv", 0.6))
    dates = [datetime.date(2019, 1, 1), datetime.date(2020, 2, 2), None]
    _, text = pdf_text(pdf_report(pred, [photo(i) for i in range(3)], ["a.jpg", "b.jpg", "c.jpg"], CARD,
                                  dates=dates, dates_entered=[False, True, False]))
    assert "a.jpg (2019-01-01)" in text and "b.jpg (2020-02-02, entered by the user)" in text
    assert "2020-02-02 (entered)" in text and "2019-01-01 (entered)" not in text  # the chart's visit labels
    assert "visit 3" in text and "c.jpg (" not in text
    assert "not read from the photo" in text


def test_cli_csv_gives_refused_photos_no_probabilities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A photo refused by the out-of-distribution check gets its status and message, and empty prediction and
    probability columns (the app shows no probabilities for it either)."""
    weights = tmp_path / "weights"
    checkpoint.save(build_tiny_model(), weights, ModelCard(name="test", trust=TrustSettings(ood=QUALITY_ONLY_OOD)))
    folder = tmp_path / "photos"
    folder.mkdir()
    make_lesion_photo().save(folder / "a_lesion.jpg", quality=90)
    Image.new("RGB", (200, 150), (128, 128, 128)).save(folder / "b_blank.png")
    out_csv = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--weights", str(weights), "--device", "cpu", "--csv", str(out_csv)]) == 0
    capsys.readouterr()
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    assert list(next(iter(rows.values()))) == ["file", "decision", "see_dermatologist", "p_malignant", "prediction",
                                               "class_name", "inconclusive", "status", "message",
                                               *(f"p_{c}" for c in CLASSES)]
    refused, answered = rows["b_blank.png"], rows["a_lesion.jpg"]
    assert refused["status"] == "out_of_distribution"
    assert refused["message"].startswith("This image is blank") and "no diagnosis" in refused["message"]
    assert all(refused[k] == "" for k in ("prediction", "class_name", "inconclusive", "see_dermatologist",
                                          "p_malignant", *(f"p_{c}" for c in CLASSES)))
    assert refused["decision"].startswith("Not assessed: this image is blank")
    assert answered["status"] in ("answered", "inconclusive") and answered["message"] == ""
    assert sum(float(answered[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    assert answered["prediction"] in CLASSES
