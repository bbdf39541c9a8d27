"""skin_model.interop.fhir.diagnostic_report (FHIR R4B Bundle) and `skin-model predict --fhir`."""

from __future__ import annotations

import base64
import datetime
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import refused
from PIL import Image

pytest.importorskip("fhir.resources")
from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from skin_model.cli import main  # noqa: E402
from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER  # noqa: E402
from skin_model.interop.fhir import CLASS_SYSTEM, REPORT_TEXT, diagnostic_report, parse_bundle, to_json  # noqa: E402
from skin_model.model.card import ModelCard  # noqa: E402
from skin_model.predict import Prediction  # noqa: E402
from skin_model.trust.triage import TriageRule  # noqa: E402

CARD = ModelCard(name="tiny test model", version="0.0-test", sha256="fe" * 32)


def photo(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def probs(top: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return {c: (p if c == top else rest) for c in CLASSES}


def resources(bundle: Bundle, kind: str) -> list:
    return [e.resource for e in bundle.entry if e.resource.get_resource_type() == kind]


def probability_values(observations: list, derived_from: str) -> dict[str, float]:
    """{class code: %} of the probability Observations derived from exactly that Media reference."""
    out = {}
    for obs in observations:
        refs = [r.reference for r in obs.derivedFrom or []]
        if obs.valueQuantity is not None and refs == [derived_from]:
            out[obs.code.coding[0].code] = float(obs.valueQuantity.value)
    return out


def test_bundle_validates_and_has_every_part() -> None:
    pred = Prediction(photos=[probs("nv", 0.8), probs("mel", 0.6)], sequence=probs("mel", 0.7),
                      sequence_method="the mean of the photos' probabilities")
    out = diagnostic_report(pred, [photo(0), photo(1, (2000, 1500))], ["2019.jpg", "2021.jpg"], CARD,
                            dates=[datetime.date(2019, 3, 1), datetime.date(2021, 3, 1)])
    assert isinstance(out, dict)
    bundle = Bundle.model_validate_json(json.dumps(out))  # strict R4B validation
    assert bundle.type == "collection"
    assert all(e.fullUrl.startswith("urn:uuid:") for e in bundle.entry)

    (report,) = resources(bundle, "DiagnosticReport")
    assert report.status == "preliminary" and report.code.text == REPORT_TEXT
    assert DISCLAIMER in report.conclusion and "Sequence of 2 photos: Most likely Melanoma (70.0%)" in report.conclusion
    assert report.conclusionCode[0].coding[0].code == "mel"
    assert str(report.effectiveDateTime) == "2021-03-01"
    ext = {e.url.split(":")[-1]: e.valueString for e in report.extension}
    assert ext["weights-sha256"] == CARD.sha256 and ext["model-version"] == "0.0-test"

    (device,) = resources(bundle, "Device")
    assert {v.value for v in device.version} == {"0.0-test", CARD.sha256}

    media = resources(bundle, "Media")
    assert len(media) == 2 and len(report.media) == 2
    raw = next(e["resource"] for e in out["entry"] if e["resource"]["id"] == media[1].id)
    assert base64.b64decode(raw["content"]["data"]) == media[1].content.data  # base64 in JSON, bytes in the model
    big = Image.open(io.BytesIO(media[1].content.data))
    assert big.format == "JPEG" and max(big.size) == 1024 and (media[1].width, media[1].height) == big.size
    assert media[0].content.title == "2019.jpg" and str(media[0].createdDateTime) == "2019-03-01"

    observations = resources(bundle, "Observation")
    assert len(observations) == 7 * 3 + 3  # 7 probabilities for 2 photos and the sequence + 3 statuses
    urls = {e.fullUrl for e in bundle.entry}
    assert {r.reference for r in report.result} == {f"urn:uuid:{o.id}" for o in observations}
    assert all(r.reference in urls for r in report.result)

    first = probability_values(observations, f"urn:uuid:{media[0].id}")
    assert first == pytest.approx({c: 100 * v for c, v in probs("nv", 0.8).items()}, abs=0.01)
    mel = next(o for o in observations if o.code.coding[0].code == "mel")
    assert mel.code.coding[0].system == CLASS_SYSTEM and mel.code.text == CLASS_NAMES["mel"]
    assert mel.valueQuantity.unit == "%" and mel.valueQuantity.code == "%"

    sequence = [o for o in observations if o.valueQuantity is not None and len(o.derivedFrom) == 2]
    assert len(sequence) == 7
    assert sequence[0].method.text == "Sequence of 2 photos of one lesion, in time order: the mean of the photos' probabilities"
    assert {o.code.coding[0].code: float(o.valueQuantity.value) for o in sequence}["mel"] == pytest.approx(70.0)


def test_a_malignant_possibility_leads_the_conclusion() -> None:
    rule = TriageRule(threshold=0.25, malignant=("akiec", "bcc", "mel"), sensitivity=0.91, specificity=0.74)
    worrying = {**probs("nv", 0.52), "mel": 0.46, "bcc": 0.005, "akiec": 0.005, "bkl": 0.004, "df": 0.003, "vasc": 0.003}
    pred = Prediction(photos=[worrying, probs("nv", 0.97)], sequence=worrying, sequence_photos=[0, 1], triage=rule)
    bundle = parse_bundle(to_json(diagnostic_report(pred, [photo(0), photo(1)], ["a.jpg", "b.jpg"], CARD)))
    report = resources(bundle, "DiagnosticReport")[0]
    assert report.conclusion.startswith("Sequence of 2 photos: Possibly melanoma (46.0%): see a dermatologist; "
                                        "a.jpg: Possibly melanoma (46.0%): see a dermatologist; "
                                        "b.jpg: Most likely Melanocytic nevus (97.0%)")
    assert report.conclusionCode[0].coding[0].code == "mel"  # what the headline names, not the top class
    observations = resources(bundle, "Observation")
    statuses = [o.valueCodeableConcept.coding[0].code for o in observations if o.valueCodeableConcept is not None]
    assert statuses == ["see_dermatologist", "answered", "see_dermatologist"]
    malignant = [o for o in observations if o.code.coding and o.code.coding[0].code == "p_malignant"]
    assert [float(o.valueQuantity.value) for o in malignant] == pytest.approx([47.0, 1.5, 47.0])
    assert [o.interpretation[0].text for o in malignant] == ["see a dermatologist", "below the triage threshold",
                                                             "see a dermatologist"]


def test_inconclusive_status_observation() -> None:
    pred = Prediction(photos=[probs("bcc", 0.4)], sequence=None, inconclusive_below=0.5)
    bundle = parse_bundle(to_json(diagnostic_report(pred, [photo(2)], ["x.png"], CARD)))
    status = [o for o in resources(bundle, "Observation") if o.valueCodeableConcept is not None]
    assert len(status) == 1
    assert status[0].valueCodeableConcept.coding[0].code == "inconclusive"
    assert "x.png: Inconclusive: top class Basal cell carcinoma at 40.0%" in resources(bundle, "DiagnosticReport")[0].conclusion
    assert len(resources(bundle, "Observation")) == 7 + 1


def test_out_of_distribution_photo_has_status_but_no_probabilities() -> None:
    pred = Prediction(photos=[probs("vasc", 0.9), probs("df", 0.9)], sequence=None, ood=refused(2, {0: "blank"}))
    bundle = parse_bundle(diagnostic_report(pred, [photo(0), photo(1)], ["blank.jpg", "ok.jpg"], CARD))
    observations = resources(bundle, "Observation")
    assert len(observations) == 7 + 2
    codes = [o.valueCodeableConcept.coding[0].code for o in observations if o.valueCodeableConcept is not None]
    assert codes == ["out_of_distribution", "answered"]
    report = resources(bundle, "DiagnosticReport")[0]
    assert "blank.jpg: Not assessed: this image is blank" in report.conclusion
    assert report.conclusionCode[0].coding[0].code == "df"


def test_dates_entered_by_the_user_are_marked() -> None:
    """A date typed in by the user (not read from the photo's file) says so on its Media and Observations."""
    pred = Prediction(photos=[probs("nv", 0.8), probs("nv", 0.7)], sequence=None)
    bundle = parse_bundle(diagnostic_report(pred, [photo(0), photo(1)], ["exif.jpg", "typed.jpg"], CARD,
                                            dates=[datetime.date(2019, 3, 1), datetime.date(2020, 4, 2)],
                                            dates_entered=[False, True]))
    exif, typed = resources(bundle, "Media")
    assert str(typed.createdDateTime) == "2020-04-02" and "entered by the user" in typed.note[0].text
    assert str(exif.createdDateTime) == "2019-03-01" and not exif.note
    notes = {o.note[0].text for o in resources(bundle, "Observation")}
    assert any("typed.jpg" in n and "entered by the user" in n for n in notes)
    assert not any("exif.jpg" in n and "entered" in n for n in notes)


def test_cli_writes_fhir_with_attached_pdf(tiny_weights: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        path = tmp_path / f"visit{i}.png"
        photo(i, (96, 72)).save(path)
        paths.append(str(path))
    out_json, out_pdf = tmp_path / "report.json", tmp_path / "report.pdf"
    code = main(["predict", *paths, "--weights", str(tiny_weights), "--device", "cpu",
                 "--fhir", str(out_json), "--pdf", str(out_pdf)])
    assert code == 0
    bundle = Bundle.model_validate_json(out_json.read_text())
    report = resources(bundle, "DiagnosticReport")[0]
    assert report.presentedForm[0].data == out_pdf.read_bytes()
    assert len(resources(bundle, "Media")) == 2
    assert len(resources(bundle, "Observation")) == 2 * (7 + 1)  # no --sequence: photos scored independently
    card = json.loads((tiny_weights / "model_card.json").read_text())
    assert resources(bundle, "Device")[0].version[1].value == card["sha256"]


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        diagnostic_report(Prediction(photos=[probs("nv", 0.9)], sequence=None), [photo(0)], ["a", "b"], CARD)
