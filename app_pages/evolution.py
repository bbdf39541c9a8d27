"""Lesion evolution: photos of one lesion over time, with heatmaps, per-visit
probabilities, the sequence prediction and measured changes."""

from __future__ import annotations

import datetime

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages import views
from skin_model import CLASS_NAMES, CLASSES
from skin_model.explain.lesion import changes, measure
from skin_model.io.images import decode_uploads

st.title("📈 Lesion evolution")
predictor = views.require_predictor()
st.caption("Upload photos of the same lesion taken at different visits. Dates come from the photos' EXIF "
           "data when present; check and edit them below. Photos are sorted by date.")

files = views.photo_uploader("Photos of one lesion", key="evolution_files")
context = views.patient_context("evolution")
photos, errors = decode_uploads(files)
views.show_errors(errors)
if len(photos) < 2:
    st.info("Upload at least two photos of the same lesion to see how it evolved.")
    st.stop()

st.subheader("Visit dates")
today = datetime.date.today()
cols = st.columns(min(len(photos), 4))
for i, photo in enumerate(photos):
    default = photo.date or today - datetime.timedelta(days=30 * (len(photos) - 1 - i))
    photo.date = cols[i % len(cols)].date_input(photo.name, value=default, key=f"date_{photo.digest}_{i}")
photos.sort(key=lambda p: (p.date, p.name))

method, target, opacity = views.cam_controls("evolution", predictor.default_cam_method)
analysis = views.analyse(predictor, photos, context, method, target, sequence=True)
prediction = analysis.prediction

st.subheader("Sequence prediction (all visits together)")
st.caption(f"Combines {predictor.sequence_method}.")
left, right = st.columns([1, 2])
if prediction.sequence is None:
    st.warning("None of the photos could be analysed as a dermatoscopic photo of a lesion.")
    st.stop()
with left:
    views.verdict(prediction.sequence, prediction)
with right:
    views.chart(views.probability_chart(prediction.sequence), key="evo_sequence")

st.subheader("Visits")
cols = st.columns(min(len(photos), 4))
for i, (photo, probs, heat) in enumerate(zip(photos, prediction.photos, analysis.heatmaps)):
    with cols[i % len(cols)]:
        st.image(photo.image, caption=f"{photo.date:%Y-%m-%d} · {photo.name}", width="stretch")
        st.image(heat.overlay(photo.image, opacity), caption=f"{heat.method} for {heat.target}",
                 width="stretch")
        views.verdict(probs, prediction, i)

per_visit = pd.DataFrame([{"date": p.date, "class": CLASS_NAMES[c], "probability": probs[c]}
                          for p, probs in zip(photos, prediction.photos) for c in CLASSES])
fig = px.line(per_visit, x="date", y="probability", color="class", markers=True,
              title="Probability of each class per visit")
fig.update_yaxes(range=[0, 1], tickformat=".0%")
views.chart(fig, key="evo_lines")
views.downloads(analysis, photos, predictor.card, "evolution")

st.subheader("Measured changes")
st.caption("From an automatic segmentation of each photo. Area is relative to the frame, so it is comparable "
           "only between photos taken at the same magnification.")
measures = changes([measure(p.image) for p in photos])
table = pd.DataFrame([{"date": p.date, "photo": p.name, "area vs first visit": m["area_vs_first"],
                       "lesion share of frame": m["area_fraction"], "colour variation (Lab std)": m["colour_variation"],
                       "asymmetry (0 = symmetric)": m["asymmetry"]} for p, m in zip(photos, measures)])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"area vs first visit": st.column_config.NumberColumn(format="%.2f×"),
                            "lesion share of frame": st.column_config.NumberColumn(format="%.1%%")})
long = table.melt(id_vars=["date", "photo"], value_vars=["area vs first visit", "colour variation (Lab std)",
                                                          "asymmetry (0 = symmetric)"])
st.plotly_chart(px.line(long, x="date", y="value", facet_row="variable", markers=True, height=500)
                .update_yaxes(matches=None), key="evo_changes")
