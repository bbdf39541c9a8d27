"""UI pieces shared by the pages: cached model, upload decoding, charts, CAM controls.

Every decision (decoding, prediction, confidence, heatmaps) is made by
`skin_model`; this module only arranges it on screen.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from skin_model import (
    CLASS_NAMES,
    CLASSES,
    MALIGNANT,
    ImageError,
    Prediction,
    Predictor,
    load_image,
    load_predictor,
)
from skin_model.constants import DISCLAIMER, SITES
from skin_model.explain import METHODS, Explainer, Heatmap, default_method
from skin_model.images import photo_date

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "heic", "heif", "dcm", "dicom"]
MALIGNANT_COLOUR, BENIGN_COLOUR = "#d62728", "#1f77b4"


@st.cache_resource(show_spinner="Loading the model…")
def get_predictor() -> Predictor:
    """One predictor per process, on the GPU when there is one."""
    return load_predictor(os.environ.get("SKIN_MODEL_WEIGHTS") or None)


@st.cache_resource(show_spinner=False)
def get_explainer() -> Explainer:
    return Explainer(get_predictor())


@dataclass
class Photo:
    """A decoded photo kept in memory only."""

    name: str
    image: Image.Image
    digest: str
    date: object = None


DISPLAY_SIDE = 1024


def safe(text: str) -> str:
    """A file name shown as plain text, not as markdown (a name must not become a link)."""
    return "".join("\\" + ch if ch in "\\`*[]()<>" else ch for ch in text)


def decode(name: str, data: bytes) -> Photo:
    """Decode one upload; raises ImageError with a message for the user. The photo is kept
    at most DISPLAY_SIDE pixels a side (the model sees 128): heatmap overlays and reports of
    a 60-megapixel upload would otherwise cost gigabytes."""
    image = load_image(data, name=name)
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return Photo(name=name, image=image, digest=hashlib.sha256(data).hexdigest(), date=photo_date(data))


def decode_all(files: list) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Decode every upload; broken ones become (name, message) errors, the rest go on.
    The same photo uploaded twice is kept once (it is not a second visit)."""
    photos, errors, seen = [], [], set()
    for f in files:
        try:
            photo = decode(f.name, f.getvalue())
        except ImageError as exc:
            errors.append((f.name, str(exc)))
            continue
        except Exception:  # never let one file take the page down
            errors.append((f.name, f"{f.name}: this file could not be read as an image"))
            continue
        if photo.digest in seen:
            errors.append((f.name, f"{f.name}: the same photo was uploaded twice; it is analysed once"))
            continue
        seen.add(photo.digest)
        photos.append(photo)
    return photos, errors


def show_errors(errors: list[tuple[str, str]]) -> None:
    """One message next to each file that was not analysed."""
    for _name, message in errors:
        st.error(f"Not analysed: {safe(message)}")


def sidebar() -> None:
    """Device and disclaimer, on every page."""
    with st.sidebar:
        try:
            st.caption(f"Model runs on: **{get_predictor().device_name}**")
        except Exception as exc:  # weights missing or altered: say so, keep the page up
            st.error(f"The model could not be loaded: {exc}")
        st.warning(DISCLAIMER, icon="⚠️")


def patient_context(key: str) -> dict:
    """Optional age, sex and body site (the HAM10000 metadata the model can use)."""
    with st.expander("Patient context (optional)"):
        c1, c2, c3 = st.columns(3)
        age = c1.number_input("Age", min_value=0, max_value=110, value=None, step=1, key=f"{key}_age")
        sex = c2.selectbox("Sex", ["unknown", "male", "female"], key=f"{key}_sex")
        site = c3.selectbox("Body site", ["unknown", *SITES], key=f"{key}_site")
    return {"age": float(age) if age is not None else None, "sex": None if sex == "unknown" else sex,
            "site": None if site == "unknown" else site}


def label(code: str) -> str:
    return f"{CLASS_NAMES[code]} ({code})" + (" ⚠ malignant" if code in MALIGNANT else "")


def short_label(code: str) -> str:
    """Full class name, shortened where it would crowd a chart; ⚠ marks malignant classes."""
    name = {"akiec": "Actinic keratosis / IEC"}.get(code, CLASS_NAMES[code])
    return f"{name} ⚠" if code in MALIGNANT else name


def probability_chart(probs: dict[str, float], title: str | None = None) -> go.Figure:
    """Sorted horizontal bars with full class names; malignant classes in red."""
    order = sorted(probs, key=probs.get)
    fig = go.Figure(go.Bar(
        x=[probs[c] for c in order], y=[short_label(c) for c in order], orientation="h",
        marker_color=[MALIGNANT_COLOUR if c in MALIGNANT else BENIGN_COLOUR for c in order],
        text=[f"{probs[c]:.1%}" for c in order], textposition="outside", cliponaxis=False, customdata=order,
        hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis=dict(range=[0, 1.12], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1],
                                              title="probability (red ⚠ = malignant class)"),
                      height=320, margin=dict(l=10, r=10, t=40 if title else 30, b=10))
    return fig


def chart(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def verdict(probs: dict[str, float], prediction: Prediction, index: int | None = None) -> bool:
    """The top diagnosis, a clear inconclusive state, or why the photo gets no diagnosis.
    Returns False when the photo was rejected (so no probabilities should be shown)."""
    rejected = prediction.rejected(index) if index is not None else None
    if rejected:
        st.warning(f"**No diagnosis.** {rejected} Upload a sharp, well-lit dermatoscopic photo of the lesion.")
        return False
    code, p = Prediction.top(probs)
    if prediction.is_inconclusive(probs):
        st.warning(f"**Inconclusive**: the model is not confident (top class {CLASS_NAMES[code]} at {p:.0%}, "
                   f"below the {prediction.inconclusive_below:.0%} threshold).")
    elif code in MALIGNANT:
        st.error(f"**{CLASS_NAMES[code]}** ({code}, malignant): {p:.1%}")
    else:
        st.success(f"**{CLASS_NAMES[code]}** ({code}): {p:.1%}")
    return True


def cam_controls(key: str, default_target: str | None = None) -> tuple[str, str | None, float]:
    """Method, target class and opacity for the heatmaps."""
    c1, c2, c3 = st.columns(3)
    best = default_method(get_predictor().card)
    method = c1.selectbox("Heatmap method", list(METHODS), index=list(METHODS).index(best), key=f"{key}_method",
                          help="The default is the method whose heatmaps pointed inside the lesion most often on test.")
    options = ["predicted class", *CLASSES]
    target = c2.selectbox("Explain class", options, key=f"{key}_target",
                          format_func=lambda c: c if c == "predicted class" else label(c))
    opacity = c3.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key=f"{key}_opacity")
    return method, None if target == "predicted class" else target, opacity


def release_freed_memory() -> None:
    """Hand the memory torch has freed back to the system. glibc keeps freed blocks in the
    malloc arena of the thread that freed them, and Streamlit runs every rerun in a new
    thread: without this the app grows by about 100 MB over its first 20 analyses."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


@st.cache_data(max_entries=256, show_spinner=False)
def _cam(digest: str, _image: Image.Image, target: str | None, method: str) -> tuple[np.ndarray, str]:
    heat = get_explainer().heatmap(_image, target, method)
    release_freed_memory()  # a new photo was just scored and explained: the largest allocations are over
    return heat.cam, heat.target


def heatmap(photo: Photo, target: str | None, method: str) -> Heatmap:
    """The photo's CAM, cached by content so moving the opacity slider is instant."""
    cam, code = _cam(photo.digest, photo.image, target, method)
    return Heatmap(cam=cam, target=code, method=method)


def pdf_report(prediction: Prediction, photos: list[Photo], heats: list[Heatmap], card: dict) -> bytes:
    """The PDF report of one analysis, with each photo's heatmap overlay."""
    from skin_model import report  # fpdf2 and its font tools load only once a report is asked for

    overlays = [heat.overlay(p.image, 0.45) for heat, p in zip(heats, photos)]
    return report.pdf_report(prediction, [p.image for p in photos], [p.name for p in photos], card,
                             heatmaps=overlays, dates=[p.date for p in photos])


def fhir_report(prediction: Prediction, photos: list[Photo], card: dict) -> str:
    """The FHIR R4 DiagnosticReport bundle of one analysis, as JSON."""
    from skin_model import fhir  # the FHIR models (pydantic) load only once a report is asked for

    return fhir.to_json(fhir.diagnostic_report(prediction, [p.image for p in photos], [p.name for p in photos],
                                               card, dates=[p.date for p in photos]))


def downloads(prediction: Prediction, photos: list[Photo], target: str | None, method: str, key: str) -> None:
    """PDF and FHIR downloads of this analysis. Each is built in memory when its button is
    clicked, not on every rerun (each move of the opacity slider used to rebuild both)."""
    card = get_predictor().card
    heats = [heatmap(p, target, method) for p in photos]  # cached; computed here, not in the download thread
    c1, c2 = st.columns(2)
    c1.download_button("⬇ PDF report", lambda: pdf_report(prediction, photos, heats, card),
                       file_name="skin-lesion-report.pdf", mime="application/pdf", on_click="ignore",
                       key=f"{key}_pdf")
    c2.download_button("⬇ FHIR R4 DiagnosticReport (JSON)", lambda: fhir_report(prediction, photos, card),
                       file_name="skin-lesion-report.fhir.json", mime="application/fhir+json", on_click="ignore",
                       key=f"{key}_fhir")
