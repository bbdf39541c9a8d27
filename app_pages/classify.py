"""Classify: upload photos (or take one), see probabilities, verdicts and heatmaps."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import views
from skin_model import CLASS_NAMES
from skin_model.constants import CONFIRMATION
from skin_model.io.images import FORMAT_NAMES, decode_uploads

st.title("🔍 Classify a skin lesion")
predictor = views.require_predictor()
st.caption("Upload one dermatoscopic photo, or several photos of the same lesion in time order. "
           "Photos stay in memory and are never stored.")

files = views.photo_uploader("Dermatoscopic photos", key="classify_files")
camera = st.camera_input("…or take a photo", key="camera") if st.toggle("Use the camera") else None

if camera is not None:
    files.append((camera.name, camera.getvalue()))
if files and st.session_state.get("analyse_paths"):  # the user's own lesion: never pooled with a dataset photo
    cleared = views.forget_dataset_photo("classify")
    st.info("The dataset photo sent by the explorer was removed: it shows another lesion, and photos of "
            "different lesions are never analysed together." + (" The dataset patient's age, sex and site were "
                                                                 "cleared too." if cleared else ""))
unread = []
for path in map(Path, st.session_state.get("analyse_paths", [])):  # a dataset photo sent by the explorer
    try:
        files.append((path.name, path.read_bytes()))
    except OSError as exc:
        unread.append((path.name, f"{path.name}: the file cannot be read ({exc.strerror or exc})"))
known = st.session_state.get("analyse_known") if st.session_state.get("analyse_paths") else None
if known:
    st.info(f"HAM10000 photo {known['image_id']}: the dataset's diagnosis is **{CLASS_NAMES[known['dx']]}**, "
            f"confirmed by {CONFIRMATION.get(known['dx_type'], known['dx_type'])}. The patient context below holds "
            "the dataset's age, sex and site.")
if st.session_state.get("analyse_paths") and st.button("Clear the dataset photo"):
    views.forget_dataset_photo("classify")
    st.rerun()
context = views.patient_context("classify")  # after the dataset photo's handling, which may reset it

with st.spinner("Decoding the photos…"):
    photos, errors = decode_uploads(files)
views.show_errors(unread + errors)
if not photos:
    st.info(f"Upload a photo to start. {FORMAT_NAMES} photos are accepted.")
    views.example_picker("classify")
    st.stop()

method, target, opacity = views.cam_controls("classify", predictor.default_cam_method)
analysis = views.analyse(predictor, photos, context, method, target)
prediction = analysis.prediction

if prediction.sequence is not None:
    st.subheader(f"Sequence prediction over {len(prediction.sequence_photos)} photos of the lesion")
    st.caption(f"Combines {predictor.sequence_method}.")
    left, right = st.columns([1, 2])
    sequence_slot = left.empty()  # its verdict, sent once its chart and every photo below are on the page
    with right:
        views.chart(views.probability_chart(prediction.sequence), key="sequence_chart")

for i, (photo, probs, heat) in enumerate(zip(photos, prediction.photos, analysis.heatmaps)):
    st.divider()
    st.subheader(views.safe(photo.name))
    c1, c2, c3 = st.columns([1, 1, 2])
    decision = prediction.decision(i)
    answered = prediction.rejected(i) is None
    c1.image(photo.image, caption="photo", width="stretch")
    if answered:
        c2.image(heat.overlay(photo.image, opacity), width="stretch",
                 caption=views.heatmap_caption(heat))
    with c3:
        slot = st.empty()  # the verdict goes above the chart, sent after the photo, heatmap and chart
        if answered:
            views.chart(views.probability_chart(probs), key=f"chart_{i}")
    with slot.container():
        views.verdict(decision)
if prediction.sequence is not None:
    with sequence_slot.container():
        views.verdict(prediction.sequence_decision())

st.divider()
views.explain_classes()
views.downloads(analysis, photos, predictor.card, "classify", opacity)
