"""The decision shown to users: one function, so the app, the CLI, the PDF and the FHIR report
can never disagree on what a photo or a sequence means.

Order of precedence: a refused photo gets no diagnosis; otherwise the triage flag comes first,
so a benign top class never hides a malignant possibility behind "inconclusive"; then the
confidence threshold decides between an answer and "inconclusive". Every number is written
by `percent`, so the same value reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from skin_model.constants import CLASS_NAMES
from skin_model.trust.triage import TriageRule

STATUSES = ("out_of_distribution", "see_dermatologist", "answered", "inconclusive")
STATUS_LABELS = {
    "out_of_distribution": "Not assessed",
    "see_dermatologist": "See a dermatologist",
    "answered": "Answered",
    "inconclusive": "Inconclusive",
}


def percent(value: float) -> str:
    """Every probability the user reads, in one format."""
    return f"{100 * value:.1f}%"


def triage_rule_text(rule: TriageRule) -> str:
    """The triage rule in one sentence, as the CLI, the PDF and the app's model card quote it."""
    text = (f"See a dermatologist when the probability of a malignant lesion ({' + '.join(rule.malignant)}) is at "
            f"least {percent(rule.threshold)} for a photo ({rule.operating_point()})")
    if rule.sequence is not None:
        text += (f", and at least {percent(rule.sequence.threshold)} for a sequence of photos of one lesion "
                 f"({rule.sequence.operating_point()})")
    return text + "."


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


@dataclass(frozen=True)
class Decision:
    """What one photo (or one lesion's sequence) means for the user.

    `status` is one of STATUSES; `headline` the sentence every output shows first and
    `detail` the one under it; `refer` the triage flag (None when no triage rule is fitted or
    the photo was refused); `suspect` the most likely malignant class when referred."""

    status: str
    headline: str
    detail: str
    top: str | None = None
    top_probability: float | None = None
    inconclusive: bool = False
    malignant_probability: float | None = None
    refer: bool | None = None
    suspect: str | None = None
    reason: str | None = None

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def decide(probs: Mapping[str, float] | None, inconclusive_below: float, triage: TriageRule | None = None,
           rejection: str | None = None, names: Mapping[str, str] = CLASS_NAMES) -> Decision:
    """The decision for one photo or sequence from its shown probabilities, the card's
    confidence threshold and triage rule, and the out-of-distribution refusal (if any)."""
    if rejection is not None or probs is None:
        reason = rejection or "No probabilities were computed."
        return Decision(status="out_of_distribution", headline=f"Not assessed: {_lower_first(reason).rstrip('.')}",
                        detail="The model gives no diagnosis and no triage for this image.", reason=reason)
    top = max(probs, key=probs.__getitem__)
    p = float(probs[top])
    inconclusive = p < inconclusive_below
    confidence = (f"Top class {names[top]} at {percent(p)}"
                  + (f", below the {percent(inconclusive_below)} confidence threshold." if inconclusive else "."))
    if triage is None:
        headline = (f"Inconclusive: top class {names[top]} at {percent(p)}" if inconclusive
                    else f"Most likely {names[top]} ({percent(p)})")
        return Decision(status="inconclusive" if inconclusive else "answered", headline=headline, detail=confidence,
                        top=top, top_probability=p, inconclusive=inconclusive)
    pm = triage.malignant_probability(probs)
    refer = pm >= triage.threshold
    malignant_sum = " + ".join(triage.malignant)
    if refer:
        suspect = top if top in triage.malignant else max(triage.malignant, key=lambda c: probs[c])
        headline = (f"{names[top]} ({percent(p)}): see a dermatologist" if suspect == top
                    else f"Possibly {_lower_first(names[suspect])} ({percent(float(probs[suspect]))}): see a dermatologist")
        detail = (f"Probability of a malignant lesion ({malignant_sum}) {percent(pm)}, at or above the triage threshold "
                  f"{percent(triage.threshold)} ({triage.operating_point()}). {confidence}")
        return Decision(status="see_dermatologist", headline=headline, detail=detail, top=top, top_probability=p,
                        inconclusive=inconclusive, malignant_probability=pm, refer=True, suspect=suspect)
    headline = (f"Inconclusive: top class {names[top]} at {percent(p)}" if inconclusive
                else f"Most likely {names[top]} ({percent(p)})")
    detail = (f"{confidence} Probability of a malignant lesion ({malignant_sum}) {percent(pm)}, below the triage "
              f"threshold {percent(triage.threshold)} ({triage.operating_point()}).")
    return Decision(status="inconclusive" if inconclusive else "answered", headline=headline, detail=detail, top=top,
                    top_probability=p, inconclusive=inconclusive, malignant_probability=pm, refer=False)
