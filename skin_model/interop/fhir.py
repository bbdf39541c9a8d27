"""Export a prediction as a FHIR R4 document (a Bundle of type "collection").

Built with the `fhir.resources` models of FHIR **R4B** (4.3.0; `fhir.resources.R4B`,
the R4-compatible release: the package's top-level modules are R5 since version
7), so the output is validated as it is made. The bundle holds:

- a DiagnosticReport (status "preliminary", code text "Dermatoscopic image
  analysis (research demo)", a conclusion with the top class(es) and the
  research-demo disclaimer, the model version and weights sha256 as extensions,
  optionally the PDF report as presentedForm);
- a Device for the model (name, version, weights sha256);
- one Media per photo (base64 JPEG, at most `max_side` pixels a side; a date the user
  entered, rather than one read from the photo's file, is marked in its note);
- one Observation per class probability per photo (valueQuantity in %, code =
  the HAM10000 class code with its full name), and the same set for the
  sequence when the photos were read as one lesion;
- one "analysis status" Observation per photo (and for the sequence): the decision
  the app shows (skin_model.trust.decision): see_dermatologist (the probability of a
  malignant lesion is at or above the triage threshold), answered, inconclusive (top
  class below the model's threshold) or out_of_distribution (no diagnosis: the photo is
  not a usable dermatoscopic photo; such photos get no probability Observations), with
  the decision's headline and detail as its note; and, with a triage rule, one
  "probability of a malignant lesion" Observation.

The conclusion is the decisions' headlines, word for word as the app and the PDF give them.
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
from skin_model.interop.common import iso_date, jpeg
from skin_model.model.card import ModelCard
from skin_model.trust.decision import Decision

FHIR_VERSION = "4.3.0 (R4B)"
REPORT_TEXT = "Dermatoscopic image analysis (research demo)"
CLASS_SYSTEM = "urn:skin-model:ham10000-diagnosis"
STATUS_SYSTEM = "urn:skin-model:analysis-status"
TRIAGE_SYSTEM = "urn:skin-model:triage"
EXTENSION_BASE = "urn:skin-model:fhir:"
UCUM = "http://unitsofmeasure.org"
ENTERED_NOTE = "Its date was entered by the user, not read from the photo's file."
STATUS_TEXT = {
    "see_dermatologist": "See a dermatologist (probability of a malignant lesion at or above the triage threshold)",
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


def _decision_observations(decision: Decision, derived: list[Reference], device: Reference, method: str,
                           note: str, effective: str | None) -> list[Observation]:
    """The decision as the app shows it (status, headline, detail) and, when triage applies,
    the probability of a malignant lesion with its flag."""
    status = decision.status
    out = [Observation(
        id=_uid(), status="preliminary",
        code=CodeableConcept(text="Analysis status"),
        valueCodeableConcept=CodeableConcept(
            coding=[Coding(system=STATUS_SYSTEM, code=status, display=STATUS_TEXT[status])], text=decision.headline),
        method=CodeableConcept(text=method), device=device, derivedFrom=derived, effectiveDateTime=effective,
        note=[{"text": f"{note} {decision.headline}. {decision.detail}"}],
    )]
    if decision.malignant_probability is not None:
        out.append(Observation(
            id=_uid(), status="preliminary",
            code=CodeableConcept(coding=[Coding(system=TRIAGE_SYSTEM, code="p_malignant",
                                                display="Probability of a malignant lesion")],
                                 text="Probability of a malignant lesion (akiec + bcc + mel)"),
            valueQuantity=Quantity(value=round(100.0 * decision.malignant_probability, 2), unit="%", system=UCUM,
                                   code="%"),
            interpretation=[CodeableConcept(text="see a dermatologist" if decision.refer
                                            else "below the triage threshold")],
            method=CodeableConcept(text=method), device=device, derivedFrom=derived, effectiveDateTime=effective,
            note=[{"text": decision.detail}],
        ))
    return out


def diagnostic_report(prediction: Any, photos: Sequence[Image.Image], names: Sequence[str], card: ModelCard,
                      dates: Sequence[Any] | None = None, pdf: bytes | None = None,
                      max_side: int = 1024, dates_entered: Sequence[bool] | None = None) -> dict[str, Any]:
    """The FHIR Bundle (as JSON-ready dict) for photos of one lesion scored by `prediction`.

    `prediction` is a :class:`skin_model.predict.Prediction` for `photos` (same order);
    `card` the model card (its name, version and sha256 are recorded); `dates` the
    photo dates (date or None each) and `dates_entered` which of them the user typed in (they are
    marked: a reader must not take them for the camera's); `pdf` an optional PDF report to attach.
    """
    if len(photos) != len(names) or len(photos) != len(prediction.photos):
        raise ValueError("photos, names and prediction.photos must have the same length")
    dates = list(dates) if dates is not None else [None] * len(photos)
    entered = list(dates_entered) if dates_entered is not None else [False] * len(photos)
    if len(dates) != len(photos) or len(entered) != len(photos):
        raise ValueError("dates and dates_entered must have one entry per photo")
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
    decisions: list[Decision] = []
    for i, (photo, label) in enumerate(zip(photos, names)):
        data, (width, height) = jpeg(photo, max_side)
        media_id = _uid()
        effective = iso_date(dates[i])
        date_note = ENTERED_NOTE if effective and entered[i] else None
        media = Media(
            id=media_id, status="completed",
            type=CodeableConcept(coding=[Coding(system="http://terminology.hl7.org/CodeSystem/media-type",
                                                code="image", display="Image")]),
            modality=CodeableConcept(text="Dermatoscopic photo"),
            createdDateTime=effective, width=width, height=height, frames=1,
            content=Attachment(contentType="image/jpeg", data=base64.b64encode(data).decode("ascii"),
                               title=label, size=len(data)),
            note=[{"text": date_note}] if date_note else None,
        )
        entries.append(media)
        ref = _ref(media_id, label)
        media_refs.append(ref)
        report_media.append(DiagnosticReportMedia(comment=label, link=ref))
        decision = prediction.decision(i)
        decisions.append(decision)
        note = f"Photo {i + 1} of {len(photos)}: {label}." + (f" {date_note}" if date_note else "")
        if decision.status != "out_of_distribution":
            observations += [(o, f"{label}: {o.code.text}") for o in
                             _probability_observations(prediction.photos[i], [ref], device_ref, "Single photo (CNN)",
                                                       note, effective)]
        lines.append(f"{label}: {decision.headline}")
        observations += [(o, f"{label}: {o.code.text}") for o in
                         _decision_observations(decision, [ref], device_ref, "Single photo (CNN)", note, effective)]

    sequence = getattr(prediction, "sequence", None)
    if sequence:
        read = len(getattr(prediction, "sequence_photos", None) or photos)
        how = getattr(prediction, "sequence_method", None) or "the photos' probabilities pooled"
        method = f"Sequence of {read} photos of one lesion, in time order: {how}"
        note = "Sequence prediction over the photos that were analysed, in time order."
        last = next((iso_date(d) for d in reversed(dates) if iso_date(d)), None)
        observations += [(o, f"sequence: {o.code.text}") for o in
                         _probability_observations(sequence, media_refs, device_ref, method, note, last)]
        seq_decision = prediction.sequence_decision()
        observations += [(o, f"sequence: {o.code.text}") for o in
                         _decision_observations(seq_decision, media_refs, device_ref, method, note, last)]
        lines.insert(0, f"Sequence of {read} photos: {seq_decision.headline}")
        decisions.insert(0, seq_decision)
    entries += [o for o, _ in observations]

    # the conclusion's code is what the headline names: the suspected malignant class when referred
    lead = next((d for d in decisions if d.status != "out_of_distribution"), None)
    code = (lead.suspect or lead.top) if lead else None
    conclusion = "; ".join(lines) + f". Model {name} {version}. {DISCLAIMER}"
    report = DiagnosticReport(
        id=_uid(), status="preliminary",
        code=CodeableConcept(text=REPORT_TEXT),
        category=[CodeableConcept(text="Research demo (not for clinical use)")],
        issued=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
        effectiveDateTime=next((iso_date(d) for d in reversed(dates) if iso_date(d)), None),
        result=[_ref(o.id, display) for o, display in observations],
        media=report_media,
        conclusion=conclusion,
        conclusionCode=[_class_concept(code)] if code else None,
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
