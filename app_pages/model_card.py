"""Model card & about: what the model is, how well it did, and what it is not."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages import views
from skin_model import CLASS_NAMES, CLASSES, MALIGNANT
from skin_model.constants import CONFIRMATION, DISCLAIMER
from skin_model.evaluation.summary import interval_notes, performance_rows
from skin_model.trust.decision import triage_rule_text

# Column names of the figures tables, in words, with what each measures.
METRIC_LABELS = {
    "accuracy": ("accuracy", "share of photos whose top class is the true diagnosis"),
    "balanced_accuracy": ("balanced accuracy", "the mean of the seven classes' recalls, so rare classes count as much "
                                               "as nevi"),
    "macro_f1": ("macro F1", "the mean over classes of the balance of precision and recall"),
    "macro_auc": ("macro AUC", "how well each class's probability ranks its photos above the others, averaged over "
                               "classes (1 perfect, 0.5 chance)"),
    "ece": ("ECE", "expected calibration error: the gap between confidence and accuracy (0 = calibrated)"),
}
PER_CLASS_LABELS = {"recall": "share of the class's photos found", "precision": "share of its calls that are right",
                    "auc": "ranking of the class against the rest", "support": "test photos of the class"}


def _span(interval: list[float] | None) -> str:
    return f"{interval[0]:.1%} to {interval[1]:.1%}" if interval else "-"


st.title("📄 Model card & about")
st.error(f"**{DISCLAIMER}**", icon="⚠️")
predictor = views.require_predictor()
card = predictor.card

lstm_note = "" if predictor.sequence_uses_lstm else (
    " The network has the LSTM named above, but validation gave its correction a weight of 0: it changes none of "
    "the probabilities shown.")
st.markdown(f"""
**What it is.** {card.architecture or 'CNN-LSTM'}. It gives probabilities for the seven HAM10000
diagnoses: {", ".join(f"{CLASS_NAMES[c]} ({c})" for c in CLASSES)}. Malignant classes:
{", ".join(sorted(MALIGNANT))}. For several photos of one lesion, the sequence prediction is
{predictor.sequence_method} (chosen on validation lesions with two or more photos).{lstm_note}

**Intended use.** Teaching, research and demonstration of dermatoscopic image classification and of
explanation methods (Grad-CAM). Not for diagnosis, triage or screening of patients.

**Limitations.** Trained on HAM10000 only: mostly fair-skinned patients from two centres (Vienna, Australia),
dermatoscopic photos, seven diagnoses. Any other lesion type (e.g. squamous cell carcinoma outside akiec,
melanoma in situ on mucosa) is forced into one of the seven classes. Photos that are not dermatoscopic, badly
lit, blurred or of other skin types are out of distribution and the probabilities may be wrong while looking
confident. Heatmaps show what influenced the score, not where the pathology is.
""")
st.subheader("The seven diagnoses")
st.markdown(views.class_guide())

metrics = card.metrics
single = metrics.get("single_photo") or {}
if single:
    st.subheader("Measured performance (held-out, lesion-grouped test split)")
    st.dataframe(pd.DataFrame(performance_rows(metrics)), hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(label, help=meaning, format="%.3f")
                                for k, (label, meaning) in METRIC_LABELS.items()})
    st.caption(" · ".join(f"**{label}**: {meaning}" for label, meaning in METRIC_LABELS.values()))
    notes = interval_notes(metrics)
    if notes:
        st.caption("95% intervals, resampling whole lesions: " + "; ".join(notes) + ". An interval that spans zero "
                   "means the difference is not established on this test split.")

    full = single["full"]
    c1, c2 = st.columns([3, 2])
    cm = pd.DataFrame(full["confusion_matrix"], index=list(CLASSES), columns=list(CLASSES))
    c1.plotly_chart(px.imshow(cm, text_auto=True, color_continuous_scale="Blues",
                              labels=dict(x="predicted", y="true", color="photos"),
                              title="Confusion matrix (single photo, full frame)"), key="confusion")
    per_class = pd.DataFrame(full["per_class"]).T.rename_axis("class").reset_index()
    per_class["class"] = [CLASS_NAMES[c] for c in per_class["class"]]
    c2.dataframe(per_class, hide_index=True, width="stretch", column_config={
        k: st.column_config.NumberColumn(k, help=meaning, format="%d" if k == "support" else "%.3f")
        for k, meaning in PER_CLASS_LABELS.items()})

    if metrics.get("reliability"):
        st.subheader("Calibration")
        rel = pd.DataFrame(metrics["reliability"])
        fig = px.scatter(rel, x="confidence", y="accuracy", size="count",
                         title="Reliability diagram (test, single photo)")
        fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dash", color="grey"))
        # Margins beyond [0, 1] and no clipping: a bin at confidence and accuracy near 1 is drawn whole.
        fig.update_traces(cliponaxis=False)
        fig.update_layout(xaxis=dict(range=[-0.05, 1.08], title="mean confidence in bin"),
                          yaxis=dict(range=[-0.05, 1.08], title="accuracy in bin"))
        c1, c2 = st.columns(2)
        c1.plotly_chart(fig, key="reliability")
        photo_cal = (card.training.get("calibration") or {}).get("photo") or {}
        if photo_cal.get("confidence_map"):
            c1.caption(f"Probabilities are the logits divided by a temperature ({photo_cal['temperature']:.2f}) with a "
                       "prior correction, then the top class's probability is mapped to the accuracy seen at that "
                       "confidence on validation photos (isotonic; decisions unchanged).")
        abst = metrics.get("abstention")
        if abst:
            rc = pd.DataFrame(abst["risk_coverage"]).melt(id_vars=["coverage"],
                                                          value_vars=["balanced_accuracy", "accuracy"])
            fig = px.line(rc, x="coverage", y="value", color="variable", markers=True,
                          title="Risk-coverage: accuracy on the photos answered")
            fig.add_vline(x=abst["coverage"], line_dash="dot", annotation_text="chosen threshold")
            c2.plotly_chart(fig, key="risk_coverage")
            st.caption(f"Below a confidence of {abst['threshold']:.2f} (chosen on validation) the app answers "
                       f"**inconclusive**. On test it answers {abst['coverage']:.0%} of photos, with balanced accuracy "
                       f"{abst['balanced_accuracy_answered']:.3f} and accuracy {abst['accuracy_answered']:.3f} "
                       "on those.")
    triage_test = metrics.get("triage")
    rule = card.trust.triage
    if rule is not None:
        st.subheader("Triage: see a dermatologist?")
        st.markdown(f"Every answer starts with triage, whatever the top class. {triage_rule_text(rule)} "
                    "For photos, each framing of the validation photos (full frame, centre crop, zoom) reaches that "
                    "target at the threshold.")
        if triage_test:
            rows = [{"photos (test)": name, "sensitivity": op["sensitivity"],
                     "95% interval (sens.)": _span(op["sensitivity_interval"]), "specificity": op["specificity"],
                     "95% interval (spec.)": _span(op["specificity_interval"]), "photos": op["n"],
                     "malignant": op["n_malignant"]} for name, op in triage_test["single_photo"].items()]
            if triage_test.get("multi_photo_lesions_sequence"):
                op = triage_test["multi_photo_lesions_sequence"]
                rows.append({"photos (test)": "sequences of 2+ photos (per lesion)", "sensitivity": op["sensitivity"],
                             "95% interval (sens.)": _span(op["sensitivity_interval"]),
                             "specificity": op["specificity"], "95% interval (spec.)": _span(op["specificity_interval"]),
                             "photos": op["n"], "malignant": op["n_malignant"]})
            st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
                "sensitivity": st.column_config.NumberColumn(format="percent"),
                "specificity": st.column_config.NumberColumn(format="percent")})
            st.caption("Test split, single photos in three framings; intervals from 1,000 bootstrap resamples of "
                       "whole lesions.")
            by = triage_test.get("benign_specificity_by_confirmation")
            if by:
                st.markdown("Specificity depends on which benign lesions are counted. Among the benign test photos "
                            "(full frame), by how HAM10000 confirmed the diagnosis: "
                            + "; ".join(f"{CONFIRMATION.get(kind, kind)} **{op['specificity']:.1%}** "
                                        f"({_span(op['specificity_interval'])}, {op['n']} photos)"
                                        for kind, op in sorted(by.items(), key=lambda kv: -kv[1]["n"]))
                            + ". Benign lesions confirmed by histopathology were cut out because they looked "
                              "suspicious: they are the ones a dermatologist hesitates over.")
    ood = metrics.get("ood")
    if ood:
        st.subheader("Out-of-distribution rejection")
        st.markdown(f"Real test photos against {ood['n_outliers']} images that are not dermatoscopic photos "
                    f"(ordinary photos: the sample images scikit-image, scikit-learn and matplotlib install, each "
                    f"whole, centre-cropped and zoomed; generated documents, screenshots, noise, blank images; and "
                    f"blurred or badly exposed test photos): **AUROC {ood['auroc']:.3f}**; outliers rejected "
                    f"{ood['outliers_rejected']:.0%}; real photos wrongly rejected: "
                    + ", ".join(f"{k} {v:.1%}" for k, v in ood["real_wrongly_rejected"].items()) + ".")
        st.dataframe(pd.DataFrame([{"kind": k, "rejected": v} for k, v in ood["outliers_rejected_by_kind"].items()]),
                     hide_index=True, column_config={"rejected": st.column_config.NumberColumn(format="percent")})
    heat = metrics.get("heatmaps")
    if heat and heat.get("n"):
        st.subheader("Do the heatmaps point at the lesion?")
        rows = [{"method": k, **v} for k, v in card.heatmap_scores().items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True,
                     column_config={"pointing_game": st.column_config.NumberColumn("peak inside lesion",
                                                                                   format="percent"),
                                    "energy_inside_mask": st.column_config.NumberColumn("heat inside lesion",
                                                                                        format="percent")})
        st.caption(f"{heat['n']} test photos with the published lesion masks; the lesion covers "
                   f"{heat['lesion_share_of_frame']:.0%} of the frame on average (the chance level of the pointing "
                   "game). The app's default method is the class-specific one with the highest pointing-game score; "
                   "EigenCAM shows the photo's dominant pattern whatever the class and is offered as an alternative.")

with st.expander("Training run and data"):
    stages = {f"{name} (min)": round(card.training[key] / 60, 1) for name, key in (
        ("stage 1", "stage1_seconds"), ("stage 2's views", "views_seconds"), ("stage 2", "stage2_seconds"),
        ("trust fit", "trust_seconds")) if card.training.get(key) is not None}
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in {
        "hardware": card.training.get("hardware"), **stages, "finished": card.training.get("finished"),
        "weights": f"{card.size_bytes / 1e6:.1f} MB, sha256 {card.sha256}" if card.sha256 and card.size_bytes else None,
    }.items() if v is not None))
    st.json({"training options": card.training.get("config"), "data": asdict(card.data)}, expanded=2)

st.subheader("Dataset")
st.markdown("""
Tschandl P., Rosendahl C., Kittler H. *The HAM10000 dataset, a large collection of multi-source dermatoscopic
images of common pigmented skin lesions.* Scientific Data 5, 180161 (2018). Harvard Dataverse,
doi:10.7910/DVN/DBW86T. Released under CC BY-NC 4.0 (academic, non-commercial use, with attribution).
""")
