"""Classify: upload photos (or take one), see probabilities, verdicts and heatmaps."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import common
from skin_model import CLASS_NAMES, ImageError

st.title("🔍 Classify a skin lesion")
common.sidebar()
st.caption("Upload one dermatoscopic photo, or several photos of the same lesion in time order. "
           "Photos stay in memory and are never stored.")

files = st.file_uploader("Dermatoscopic photos", type=common.UPLOAD_TYPES, accept_multiple_files=True)
camera = st.camera_input("…or take a photo", key="camera") if st.toggle("Use the camera") else None
context = common.patient_context("classify")

photos, errors = common.decode_all(list(files or []) + ([camera] if camera is not None else []))
for path in st.session_state.get("analyse_paths", []):
    try:
        photos.append(common.decode(Path(path).name, Path(path).read_bytes()))
    except (ImageError, OSError) as exc:
        errors.append((Path(path).name, str(exc)))
if st.session_state.get("analyse_paths") and st.button("Clear the dataset photo"):
    st.session_state.pop("analyse_paths")
    st.rerun()

common.show_errors(errors)
if not photos:
    st.info("Upload a photo to start. JPEG, PNG, WebP, TIFF, GIF and HEIC are accepted.")
    st.stop()

try:
    predictor = common.get_predictor()
except Exception as exc:
    st.error(f"The model could not be loaded: {exc}")
    st.stop()

prediction = predictor.predict([p.image for p in photos], **context)
method, target, opacity = common.cam_controls("classify")

if prediction.sequence is not None:
    used = sum(1 for i in range(len(photos)) if not prediction.rejected(i))
    st.subheader(f"Sequence prediction over {min(used, 8)} photos of the lesion")
    st.caption(f"Combines {predictor.sequence_method}.")
    left, right = st.columns([1, 2])
    with left:
        common.verdict(prediction.sequence, prediction)
    with right:
        common.chart(common.probability_chart(prediction.sequence), key="sequence_chart")

for i, (photo, probs) in enumerate(zip(photos, prediction.photos)):
    st.divider()
    st.subheader(common.safe(photo.name))
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.image(photo.image, caption="photo", width="stretch")
    with c3:
        answered = common.verdict(probs, prediction, i)
        if answered:
            common.chart(common.probability_chart(probs), key=f"chart_{i}")
    if answered:
        heat = common.heatmap(photo, target, method)
        c2.image(heat.overlay(photo.image, opacity), width="stretch",
                 caption=f"{method}: where the model looked for {CLASS_NAMES[heat.target]}")

st.divider()
common.downloads(prediction, photos, target, method, "classify")
