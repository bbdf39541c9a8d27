"""Export a prediction as a FHIR R4 document (a Bundle of type "collection").

Built with the `fhir.resources` models of FHIR **R4B** (4.3.0; `fhir.resources.R4B`,
the R4-compatible release: the package's top-level modules are R5 since version
7), so the output is validated as it is made. The bundle holds:

- a DiagnosticReport (status "preliminary", code text "Dermatoscopic image
  analysis (research demo)", a conclusion with the top class(es) and the
  research-demo disclaimer, the model version and weights sha256 as extensions,
  optionally the PDF report as presentedForm);
- a Device for the model (name, version, weights sha256);
- one Media per photo (base64 JPEG, at most `max_side` pixels a side);
- one Observation per class probability per photo (valueQuantity in %, code =
  the HAM10000 class code with its full name), and the same set for the
  sequence when the photos were read as one lesion;
- one "analysis status" Observation per photo (and for the sequence):
  answered, inconclusive (top class below the model's threshold) or
  out_of_distribution (no diagnosis: the photo is not a usable dermatoscopic
  photo; such photos get no probability Observations).
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport, DiagnosticReportMedia
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from PIL import Image

from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER, MALIGNANT
from skin_model.interop.common import iso_date, jpeg, photo_status, rejection
from skin_model.model.card import ModelCard

FHIR_VERSION = "4.3.0 (R4B)"
REPORT_TEXT = "Dermatoscopic image analysis (research demo)"
CLASS_SYSTEM = "urn:skin-model:ham10000-diagnosis"
STATUS_SYSTEM = "urn:skin-model:analysis-status"
EXTENSION_BASE = "urn:skin-model:fhir:"
UCUM = "http://unitsofmeasure.org"
STATUS_TEXT = {
    "answered": "Answered (top class at or above the confidence threshold)",
    "inconclusive": "Inconclusive (top class below the confidence threshold)",
    "out_of_distribution": "Not analysed (not a usable dermatoscopic photo)",
}


def _uid() -> str:
    return str(uuid.uuid4())


def _ref(uid: str, display: str | None = None) -> Reference:
    return Reference(reference=f"urn:uuid:{uid}", display=display)


def _class_concept(code: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=CLASS_SYSTEM, code=code, display=CLASS_NAMES[code])],
                           text=CLASS_NAMES[code])


def _probability_observations(probs: dict[str, float], derived: list[Reference], device: Reference, method: str,
                              note: str, effective: str | None) -> list[Observation]:
    return [
        Observation(
            id=_uid(), status="preliminary",
            category=[CodeableConcept(coding=[Coding(
                system="http://terminology.hl7.org/CodeSystem/observation-category", code="imaging",
                display="Imaging")])],
            code=_class_concept(code),
            valueQuantity=Quantity(value=round(100.0 * float(probs[code]), 2), unit="%", system=UCUM, code="%"),
            interpretation=[CodeableConcept(text="malignant class" if code in MALIGNANT else "benign class")],
            method=CodeableConcept(text=method), device=device, derivedFrom=derived,
            note=[{"text": note}], effectiveDateTime=effective,
        )
        for code in CLASSES
    ]


def _status_observation(status: str, threshold: float, derived: list[Reference], device: Reference, method: str,
                        note: str, effective: str | None) -> Observation:
    return Observation(
        id=_uid(), status="preliminary",
        code=CodeableConcept(text="Analysis status"),
        valueCodeableConcept=CodeableConcept(
            coding=[Coding(system=STATUS_SYSTEM, code=status, display=STATUS_TEXT[status])], text=STATUS_TEXT[status]),
        method=CodeableConcept(text=method), device=device, derivedFrom=derived, effectiveDateTime=effective,
        note=[{"text": f"{note} Confidence threshold: top class at least {100 * threshold:.0f}%."}],
    )


def _top_line(probs: dict[str, float]) -> str:
    code = max(probs, key=probs.__getitem__)
    return f"{CLASS_NAMES[code]} ({code}) {100 * probs[code]:.1f}%"


def diagnostic_report(prediction: Any, photos: Sequence[Image.Image], names: Sequence[str], card: ModelCard,
                      dates: Sequence[Any] | None = None, pdf: bytes | None = None,
                      max_side: int = 1024) -> dict[str, Any]:
    """The FHIR Bundle (as JSON-ready dict) for photos of one lesion scored by `prediction`.

    `prediction` is a :class:`skin_model.predict.Prediction` for `photos` (same order);
    `card` the model card (its name, version and sha256 are recorded); `dates` the
    photo dates (date or None each); `pdf` an optional PDF report to attach.
    """
    if len(photos) != len(names) or len(photos) != len(prediction.photos):
        raise ValueError("photos, names and prediction.photos must have the same length")
    dates = list(dates) if dates is not None else [None] * len(photos)
    threshold = float(getattr(prediction, "inconclusive_below", 0.5))
    name, version, sha = card.identity()

    device_id = _uid()
    device = Device(
        id=device_id, status="active",
        deviceName=[DeviceDeviceName(name=name, type="model-name")],
        type=CodeableConcept(text="Skin-lesion classification software (research demo)"),
        version=[DeviceVersion(type=CodeableConcept(text="model version"), value=version),
                 DeviceVersion(type=CodeableConcept(text="weights sha256"), value=sha)],
        note=[{"text": DISCLAIMER}],
    )
    device_ref = _ref(device_id, f"{name} {version}")

    entries: list[Any] = [device]
    media_refs: list[Reference] = []
    report_media: list[DiagnosticReportMedia] = []
    observations: list[tuple[Observation, str]] = []  # with the display used in DiagnosticReport.result
    lines: list[str] = []
    for i, (photo, label) in enumerate(zip(photos, names)):
        data, (width, height) = jpeg(photo, max_side)
        media_id = _uid()
        effective = iso_date(dates[i])
        media = Media(
            id=media_id, status="completed",
            type=CodeableConcept(coding=[Coding(system="http://terminology.hl7.org/CodeSystem/media-type",
                                                code="image", display="Image")]),
            modality=CodeableConcept(text="Dermatoscopic photo"),
            createdDateTime=effective, width=width, height=height, frames=1,
            content=Attachment(contentType="image/jpeg", data=base64.b64encode(data).decode("ascii"),
                               title=label, size=len(data)),
        )
        entries.append(media)
        ref = _ref(media_id, label)
        media_refs.append(ref)
        report_media.append(DiagnosticReportMedia(comment=label, link=ref))
        status = photo_status(prediction, i)
        note = f"Photo {i + 1} of {len(photos)}: {label}."
        if status == "out_of_distribution":
            reason = rejection(prediction, i) or STATUS_TEXT[status]
            lines.append(f"{label}: {reason}")
            note = f"{note} {reason}"
        else:
            probs = prediction.photos[i]
            observations += [(o, f"{label}: {o.code.text}") for o in
                             _probability_observations(probs, [ref], device_ref, "Single photo (CNN)", note, effective)]
            lines.append(f"{label}: {_top_line(probs)}" + (" - inconclusive" if status == "inconclusive" else ""))
        observations.append((_status_observation(status, threshold, [ref], device_ref, "Single photo (CNN)", note,
                                                 effective), f"{label}: analysis status"))

    sequence = getattr(prediction, "sequence", None)
    if sequence:
        how = getattr(prediction, "sequence_method", None) or "the photos' probabilities pooled"
        method = f"Sequence of {len(photos)} photos of one lesion, in time order: {how}"
        note = "Sequence prediction over the photos that were analysed, in time order."
        last = next((iso_date(d) for d in reversed(dates) if iso_date(d)), None)
        observations += [(o, f"sequence: {o.code.text}") for o in
                         _probability_observations(sequence, media_refs, device_ref, method, note, last)]
        seq_status = "inconclusive" if prediction.is_inconclusive(sequence) else "answered"
        observations.append((_status_observation(seq_status, threshold, media_refs, device_ref, method, note, last),
                             "sequence: analysis status"))
        lines.insert(0, f"Sequence of {len(photos)} photos: {_top_line(sequence)}"
                        + (" - inconclusive" if seq_status == "inconclusive" else ""))
    entries += [o for o, _ in observations]

    top = sequence or next((p for i, p in enumerate(prediction.photos)
                            if photo_status(prediction, i) != "out_of_distribution"), None)
    conclusion = "Most likely class - " + "; ".join(lines) + f". Model {name} {version}. {DISCLAIMER}"
    report = DiagnosticReport(
        id=_uid(), status="preliminary",
        code=CodeableConcept(text=REPORT_TEXT),
        category=[CodeableConcept(text="Research demo (not for clinical use)")],
        issued=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
        effectiveDateTime=next((iso_date(d) for d in reversed(dates) if iso_date(d)), None),
        result=[_ref(o.id, display) for o, display in observations],
        media=report_media,
        conclusion=conclusion,
        conclusionCode=[_class_concept(max(top, key=top.__getitem__))] if top else None,
        presentedForm=[Attachment(contentType="application/pdf", data=base64.b64encode(pdf).decode("ascii"),
                                  title="Skin-lesion analysis report (PDF)")] if pdf else None,
        extension=[Extension(url=EXTENSION_BASE + "model-name", valueString=name),
                   Extension(url=EXTENSION_BASE + "model-version", valueString=version),
                   Extension(url=EXTENSION_BASE + "weights-sha256", valueString=sha),
                   Extension(url=EXTENSION_BASE + "disclaimer", valueString=DISCLAIMER)],
    )
    entries.insert(0, report)
    bundle = Bundle(
        type="collection", timestamp=report.issued,
        identifier={"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{_uid()}"},
        entry=[BundleEntry(fullUrl=f"urn:uuid:{r.id}", resource=r) for r in entries],
    )
    return json.loads(bundle.model_dump_json())


def to_json(bundle: dict[str, Any], indent: int | None = 2) -> str:
    return json.dumps(bundle, indent=indent)


def parse_bundle(data: str | bytes | dict[str, Any]) -> Bundle:
    """Validate FHIR JSON (text or dict) back into the R4B models; raises on invalid input."""
    if isinstance(data, dict):
        return Bundle.model_validate(data)
    return Bundle.model_validate_json(data)
