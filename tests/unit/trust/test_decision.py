"""skin_model.trust.decision: the one decision the app, CLI, PDF and FHIR show."""

from __future__ import annotations

import pytest

from skin_model.constants import CLASSES, MALIGNANT
from skin_model.trust.decision import decide, percent
from skin_model.trust.triage import TriageRule

RULE = TriageRule(threshold=0.2, malignant=tuple(sorted(MALIGNANT)), sensitivity=0.91, specificity=0.74)


def probs(**given: float) -> dict[str, float]:
    rest = (1 - sum(given.values())) / (len(CLASSES) - len(given))
    return {c: given.get(c, rest) for c in CLASSES}


def test_a_benign_top_class_never_hides_a_malignant_possibility() -> None:
    # the HAM_0000492 case: nevus on top, melanoma 46% -> inconclusive before, a referral now
    d = decide(probs(nv=0.52, mel=0.46), inconclusive_below=0.6, triage=RULE)
    assert d.status == "see_dermatologist" and d.refer and d.suspect == "mel"
    assert d.headline == "Possibly melanoma (46.0%): see a dermatologist"
    assert d.inconclusive and "Melanocytic nevus at 52.0%" in d.detail
    assert "sensitivity 91%, specificity 74%" in d.detail


def test_a_malignant_top_class_is_named_with_the_referral() -> None:
    d = decide(probs(bcc=0.8), inconclusive_below=0.5, triage=RULE)
    assert d.headline == "Basal cell carcinoma (80.0%): see a dermatologist" and d.suspect == "bcc"


def test_below_the_triage_threshold_the_confidence_threshold_decides() -> None:
    low = probs(nv=0.9, mel=0.05, bcc=0.01, akiec=0.01)
    d = decide(low, inconclusive_below=0.5, triage=RULE)
    assert d.status == "answered" and d.refer is False
    assert d.headline == "Most likely Melanocytic nevus (90.0%)"
    assert f"{percent(RULE.malignant_probability(low))}, below the triage threshold 20.0%" in d.detail
    unsure = decide(probs(nv=0.45, bkl=0.4, mel=0.05, bcc=0.02, akiec=0.01), inconclusive_below=0.5, triage=RULE)
    assert unsure.status == "inconclusive" and unsure.headline == "Inconclusive: top class Melanocytic nevus at 45.0%"


def test_the_threshold_itself_refers() -> None:
    d = decide(probs(mel=0.1, bcc=0.05, akiec=0.05, nv=0.8), inconclusive_below=0.5, triage=RULE)
    assert d.malignant_probability == pytest.approx(0.2) and d.refer


def test_a_refused_photo_gets_no_diagnosis_and_no_triage() -> None:
    d = decide(probs(nv=0.9), 0.5, RULE, rejection="This image is too blurred; no diagnosis is given.")
    assert d.status == "out_of_distribution" and d.refer is None and d.top is None
    assert d.headline == "Not assessed: this image is too blurred; no diagnosis is given"


def test_without_a_triage_rule_the_old_statuses_remain() -> None:
    assert decide(probs(nv=0.9), 0.5).status == "answered"
    assert decide(probs(nv=0.4, mel=0.3), 0.5).status == "inconclusive"
    assert decide(probs(nv=0.4, mel=0.3), 0.5).refer is None
