"""skin_model.interop.pdf.pdf_report and `skin-model predict --pdf/--csv` (folders, bad files)."""

from __future__ import annotations

import csv
import datetime
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skin_model.cli import main
from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER, MALIGNANT
from skin_model.interop.common import photo_status
from skin_model.interop.pdf import pdf_report
from skin_model.model.card import ModelCard
from skin_model.predict import Prediction

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
    data = pdf_report(pred, [photo(0)], ["lesion.jpg"], CARD, heatmaps=[photo(1)],
                      dates=[datetime.date(2021, 5, 6)])
    assert data.startswith(b"%PDF")
    pages, text = pdf_text(data)
    assert pages >= 1
    assert DISCLAIMER in text
    for name in CLASS_NAMES.values():
        assert name in text
    assert CARD.sha256 in text and "tiny test model" in text
    assert "Melanoma (mel), 70.0%" in text and "malignant class" in text
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
    assert "INCONCLUSIVE" in text  # photo 2 (45% < 50%)
    assert text.count("yes (!)") == len(MALIGNANT) * 4  # sequence table + three photo tables
    assert "2020 - b\u00e9.png" in text


def test_out_of_distribution_photo_gets_no_table() -> None:
    class Rejecting(Prediction):
        def rejected(self, i: int) -> str | None:
            return "This image is too blurred; no diagnosis is given." if i == 1 else None

        def status(self, i: int) -> str:
            return "out_of_distribution" if i == 1 else "answered"

    pred = Rejecting(photos=[probs("bkl", 0.9), probs("df", 0.9)], sequence=None)
    assert photo_status(pred, 1) == "out_of_distribution"
    _, text = pdf_text(pdf_report(pred, [photo(0), photo(1)], ["a.jpg", "b.jpg"], CARD))
    assert "NOT ANALYSED: This image is too blurred" in text
    assert "Dermatofibroma (df), 90.0%" not in text and "Benign keratosis-like lesion (bkl), 90.0%" in text


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
    assert "sequence:" in captured.out

    rows = list(csv.DictReader(out_csv.open()))
    assert [Path(r["file"]).name for r in rows] == ["a_2019.png", "b_2020.jpg", "c_2021.jpg"]  # sorted
    assert list(rows[0]) == ["file", "prediction", "class_name", "inconclusive", "status",
                             *(f"p_{c}" for c in CLASSES)]
    for row in rows:
        p = {c: float(row[f"p_{c}"]) for c in CLASSES}
        assert abs(sum(p.values()) - 1) < 1e-4
        assert row["prediction"] == max(p, key=p.get) and row["class_name"] == CLASS_NAMES[row["prediction"]]
        assert row["inconclusive"] == str(max(p.values()) < 0.5).lower()

    data = out_pdf.read_bytes()
    assert data.startswith(b"%PDF")
    _, text = pdf_text(data)
    assert DISCLAIMER in text and "Sequence prediction (3 photos" in text and "Heatmap (Grad-CAM)" in text
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
