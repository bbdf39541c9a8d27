"""Lesion evolution: photos of one lesion over time, with heatmaps, per-visit
probabilities, the sequence prediction and measured changes."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages import views
from skin_model import CLASS_NAMES, CLASSES
from skin_model.explain.lesion import changes, measure
from skin_model.interop.common import ENTERED_MARK, date_label, visit_label
from skin_model.io.images import decode_uploads

DATE_FROM = {"file": "the photo's file (EXIF)", "entered": "entered by you", None: "no date"}

st.title("📈 Lesion evolution")
predictor = views.require_predictor()
st.caption("Upload photos of the same lesion taken at different visits. Dates come from the photos' EXIF "
           "data when present; enter the others below. Once every photo has a date they are sorted by date.")

files = views.photo_uploader("Photos of one lesion", key="evolution_files")
context = views.patient_context("evolution")
with st.spinner("Decoding the photos…"):
    photos, errors = decode_uploads(files)
views.show_errors(errors)
if len(photos) < 2:
    st.info("Upload at least two photos of the same lesion to see how it evolved.")
    st.stop()

st.subheader("Visit dates")
st.caption(f"A date the photo's file does not hold is never made up: enter it, or leave it empty. Dates you enter "
           f"are marked {ENTERED_MARK}.")
cols = st.columns(min(len(photos), 4))
for i, photo in enumerate(photos):
    chosen = cols[i % len(cols)].date_input(
        photo.name, value=photo.date, key=f"date_{photo.digest}_{i}",
        help="Read from the photo's EXIF data" if photo.date else "The file holds no date: enter when it was taken")
    photo.date, photo.date_entered = chosen, chosen is not None and chosen != photo.date  # vs the file's
if all(p.date is not None for p in photos):
    photos.sort(key=lambda p: (p.date, p.name))
else:
    st.caption("Not every photo has a date: the visits are in upload order (visit 1, 2, 3, …).")
labels = [visit_label(i, p.date, p.date_entered) for i, p in enumerate(photos)]
source = ["entered" if p.date_entered else "file" if p.date else None for p in photos]

method, target, opacity = views.cam_controls("evolution", predictor.default_cam_method)
analysis = views.analyse(predictor, photos, context, method, target, sequence=True)
prediction = analysis.prediction

if not prediction.answered_any():
    st.warning("None of the photos could be analysed as a dermatoscopic photo of a lesion.")
    st.stop()
sequence = prediction.sequence_decision()
if sequence is None:
    st.warning("Only one photo could be analysed as a dermatoscopic photo of a lesion: its result is below. "
               "How the lesion evolved needs two or more.")
else:
    st.subheader(f"Sequence prediction over {len(prediction.sequence_photos)} visits")
    st.caption(f"Combines {predictor.sequence_method}.")
    left, right = st.columns([1, 2])
    sequence_slot = left.empty()  # its verdict, sent once its chart and every visit below are on the page
    with right:
        views.chart(views.probability_chart(prediction.sequence), key="evo_sequence")

st.subheader("Visits")
cols = st.columns(min(len(photos), 4))
for i, (photo, heat) in enumerate(zip(photos, analysis.heatmaps)):
    with cols[i % len(cols)]:
        st.image(photo.image, caption=f"{labels[i]} · {photo.name}", width="stretch")
        st.image(heat.overlay(photo.image, opacity), caption=views.heatmap_caption(heat),
                 width="stretch")
        views.verdict(prediction.decision(i))
if sequence is not None:
    with sequence_slot.container():
        views.verdict(sequence)

visits = dict(tickmode="array", tickvals=list(range(1, len(photos) + 1)), ticktext=labels, title_text="visit")
per_visit = pd.DataFrame([{"visit": i + 1, "class": CLASS_NAMES[c], "probability": probs[c]}
                          for i, probs in enumerate(prediction.photos) for c in CLASSES])
fig = px.line(per_visit, x="visit", y="probability", color="class", markers=True,
              title="Probability of each class per visit", color_discrete_map=views.colours_by_name())
fig.update_yaxes(range=[0, 1], tickformat=".0%").update_xaxes(**visits)
views.chart(fig, key="evo_lines")
views.explain_classes()
views.downloads(analysis, photos, predictor.card, "evolution", opacity)

st.subheader("Measured changes")
st.caption("From an automatic segmentation of each photo. Area is relative to the frame, so it is comparable "
           "only between photos taken at the same magnification.")
measures = changes([measure(p.image) for p in photos])
table = pd.DataFrame([{"visit": i + 1, "date": date_label(p.date, p.date_entered), "date from": DATE_FROM[s],
                       "photo": p.name, "area vs first visit": m["area_vs_first"],
                       "lesion share of frame": m["area_fraction"], "colour variation (Lab std)": m["colour_variation"],
                       "asymmetry (0 = symmetric)": m["asymmetry"]}
                      for i, (p, s, m) in enumerate(zip(photos, source, measures))])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"area vs first visit": st.column_config.NumberColumn(format="%.2f×"),
                            "lesion share of frame": st.column_config.NumberColumn(format="percent")})
st.plotly_chart(views.measures_chart(table, ["area vs first visit", "colour variation (Lab std)",
                                             "asymmetry (0 = symmetric)"], visits), key="evo_changes")
