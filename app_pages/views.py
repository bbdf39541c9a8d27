"""What the pages share: the predictor the frame loaded, the cached analysis (prediction and
heatmaps from one forward), and the pieces they draw with (upload fields, patient context,
charts, verdicts, heatmap controls, report downloads).

Every decision (decoding, prediction, confidence, heatmaps, reports) is made by `skin_model`;
this module keeps results between reruns and arranges them on screen. An analysis is cached
by the photos' content, the patient context, the heatmap method and target: moving a slider
that only changes how the result is drawn never runs the model.
"""

from __future__ import annotations

import csv
import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image

from app_pages import PREDICTOR_KEY, PROBLEM_KEY
from skin_model import CLASS_NAMES, CLASSES, MALIGNANT, Predictor
from skin_model.constants import CLASS_DESCRIPTIONS, HAM10000_PHOTOS, SEXES, SITES
from skin_model.explain.heatmap import Heatmap
from skin_model.explain.methods import METHOD_NAMES
from skin_model.io.images import ACCEPTED_SUFFIXES, Photo
from skin_model.model.card import ModelCard
from skin_model.predict import Analysis
from skin_model.trust.decision import Decision

if TYPE_CHECKING:  # plotly and pandas load with the first chart: the first page, waiting for a photo, has none
    import pandas as pd
    import plotly.graph_objects as go

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
MALIGNANT_COLOUR, BENIGN_COLOUR = "#d62728", "#1f77b4"
# One colour per class on every chart, whatever is filtered: the malignant classes in reds and oranges
# (red means malignant everywhere in the app), the benign ones in blues, greens, purple and grey.
CLASS_COLOURS = {"mel": "#b2182b", "bcc": "#e6550d", "akiec": "#d99a00",
                 "nv": "#2166ac", "bkl": "#1b9e77", "df": "#7570b3", "vasc": "#737373"}


def safe(text: str) -> str:
    """A file name shown as plain text, not as markdown (a name must not become a link)."""
    return "".join("\\" + ch if ch in "\\`*[]()<>" else ch for ch in text)


def photo_uploader(label: str, key: str) -> list[tuple[str, bytes]]:
    """A multi-file picker for every accepted format; the files as (name, bytes), kept in memory."""
    files = st.file_uploader(label, type=list(ACCEPTED_SUFFIXES), accept_multiple_files=True, key=key)
    return [(f.name, f.getvalue()) for f in files or []]


def show_errors(errors: list[tuple[str, str]]) -> None:
    """One message next to each file that was not analysed."""
    for _name, message in errors:
        st.error(f"Not analysed: {safe(message)}")


def patient_context(key: str) -> dict[str, float | str | None]:
    """Optional age, sex and body site (the HAM10000 metadata the model can use)."""
    with st.expander("Patient context (optional)"):
        c1, c2, c3 = st.columns(3)
        age = c1.number_input("Age", min_value=0, max_value=110, value=None, step=1, key=f"{key}_age")
        sex = c2.selectbox("Sex", ["unknown", *SEXES], key=f"{key}_sex")
        site = c3.selectbox("Body site", ["unknown", *SITES], key=f"{key}_site")
    return {"age": float(age) if age is not None else None, "sex": None if sex == "unknown" else sex,
            "site": None if site == "unknown" else site}


def prefill_patient_context(key: str, age: float | None, sex: str | None, site: str | None) -> None:
    """Set the patient-context widgets of page `key` before it is shown (unknown or unlisted values
    stay "unknown")."""
    st.session_state[f"{key}_age"] = int(age) if age is not None and age == age else None
    st.session_state[f"{key}_sex"] = sex if sex in SEXES else "unknown"
    st.session_state[f"{key}_site"] = site if site in SITES else "unknown"


def forget_dataset_photo(key: str) -> bool:
    """Drop the explorer's photo and what came with it, the dataset patient's context included (the
    user's own photo must not be read with another patient's age, sex and site); True if a context
    was cleared."""
    st.session_state.pop("analyse_paths", None)
    if st.session_state.pop("analyse_known", None) is None:
        return False
    prefill_patient_context(key, None, None, None)
    return True


def label(code: str) -> str:
    """Class name and code, flagged when malignant (for selectors)."""
    return f"{CLASS_NAMES[code]} ({code})" + (" ⚠ malignant" if code in MALIGNANT else "")


def short_label(code: str) -> str:
    """Full class name, shortened where it would crowd a chart; ⚠ marks malignant classes."""
    name = {"akiec": "Actinic keratosis / IEC"}.get(code, CLASS_NAMES[code])
    return f"{name} ⚠" if code in MALIGNANT else name


def class_guide() -> str:
    """Each diagnosis in plain words: what it is, malignant or benign, and how common it is in HAM10000 (the
    data the model learned from, so also how often it has seen each)."""
    total = sum(HAM10000_PHOTOS.values())
    return "\n".join(
        f"- **{CLASS_NAMES[c]}** ({c}; {'malignant' if c in MALIGNANT else 'benign'}; {HAM10000_PHOTOS[c]:,} of "
        f"HAM10000's {total:,} photos, {HAM10000_PHOTOS[c] / total:.1%}): {CLASS_DESCRIPTIONS[c]}" for c in CLASSES)


def explain_classes() -> None:
    """The class guide, one click away from the probabilities it explains."""
    with st.expander("What do these diagnoses mean?"):
        st.markdown(class_guide())
        st.caption("IEC: intraepithelial carcinoma (Bowen's disease). ⚠ and red mark the malignant classes.")


def heatmap_scale() -> str:
    """The heatmaps' colour scale as a CSS gradient through OpenCV's JET colours (the overlay's own), from
    little to most influence on the class explained."""
    import cv2

    levels = np.linspace(0, 255, 9).round().astype(np.uint8)[None]
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]
    stops = ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in colours)
    return (f'<div style="height: 0.8rem; border-radius: 0.2rem; background: linear-gradient(to right, {stops})">'
            '</div>')


def examples() -> list[dict[str, str]]:
    """The example photos shipped in examples/ (one per diagnosis, see its README), as examples.csv lists them."""
    index = EXAMPLES_DIR / "examples.csv"
    if not index.is_file():
        return []
    with open(index, newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if (EXAMPLES_DIR / row["file"]).is_file()]


def _choose_example(key: str, row: dict[str, str]) -> None:
    """Send an example to page `key` as the explorer sends a dataset photo: its diagnosis, how it was
    confirmed, and the patient's age, sex and site come along (a callback: it runs before the widgets)."""
    st.session_state["analyse_paths"] = [str(EXAMPLES_DIR / row["file"])]
    st.session_state["analyse_known"] = {"image_id": row["image_id"], "dx": row["dx"], "dx_type": row["dx_type"]}
    prefill_patient_context(key, float(row["age"]) if row["age"] else None, row["sex"], row["localization"])


def example_picker(key: str) -> None:
    """A row of example photos, one per diagnosis, each analysed with one click: something to try without a
    dermatoscopic photo of one's own (also where no dataset is mounted)."""
    rows = examples()
    if not rows:
        return
    st.markdown("**No dermatoscopic photo at hand?** Try one of these, one per diagnosis, from the HAM10000 test "
                "photos (Tschandl et al. 2018, CC BY-NC 4.0):")
    for column, row in zip(st.columns(len(rows)), rows):
        column.image(str(EXAMPLES_DIR / row["file"]), width="stretch")
        column.button(short_label(row["dx"]), key=f"{key}_example_{row['image_id']}", width="stretch",
                      on_click=_choose_example, args=(key, row), help=f"Analyse HAM10000 photo {row['image_id']}")


def probability_chart(probs: dict[str, float], title: str | None = None) -> go.Figure:
    """Sorted horizontal bars with full class names; malignant classes in red."""
    import plotly.graph_objects as go

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


def colours_by_name() -> dict[str, str]:
    """CLASS_COLOURS keyed by the full class names that charts' legends show."""
    return {CLASS_NAMES[code]: colour for code, colour in CLASS_COLOURS.items()}


def heatmap_caption(heat: Heatmap) -> str:
    """The one caption of a heatmap on every page: the method and the class it explains, by name."""
    return f"{heat.method}: where the model looked for {CLASS_NAMES[heat.target]}"


def measures_chart(table: pd.DataFrame, columns: list[str], visits: dict) -> go.Figure:
    """One panel per measure over the visits, each with its own y-axis title (a shared "value" axis
    and overlapping facet labels did not read), the visit axis labelled once, at the bottom."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(columns), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for row, column in enumerate(columns, start=1):
        fig.add_trace(go.Scatter(x=table["visit"], y=table[column], mode="lines+markers", name=column,
                                 showlegend=False, hovertemplate=f"{column}: %{{y:.3g}}<extra></extra>"), row=row, col=1)
        fig.update_yaxes(title_text=column, title_font_size=11, row=row, col=1)
    fig.update_xaxes(**{**visits, "title_text": None}).update_xaxes(title_text=visits.get("title_text"),
                                                                    row=len(columns), col=1)
    return fig.update_layout(title="Measured changes per visit", height=170 * len(columns) + 80,
                             margin=dict(l=10, r=10, t=50, b=10))


def chart(fig: go.Figure, key: str) -> None:
    """A plotly chart without the mode bar (the tests find charts by key)."""
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def verdict(decision: Decision) -> bool:
    """The decision's headline and detail, word for word as the CLI and the reports give them (red for a
    referral or a malignant answer, amber for inconclusive or refused). Returns False when the photo
    was refused (so no probabilities should be shown)."""
    text = f"**{decision.headline}**"
    if decision.status == "out_of_distribution":
        st.warning(f"{text}. Upload a sharp, well-lit dermatoscopic photo of the lesion.")
        return False
    if decision.status == "inconclusive":
        st.warning(text)
    elif decision.refer or decision.top in MALIGNANT:
        st.error(text)
    else:
        st.success(text)
    st.caption(decision.detail)
    return True


def cam_controls(key: str, default_method: str) -> tuple[str, str | None, float]:
    """Method, target class (None: the class shown for each photo) and opacity for the heatmaps."""
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Heatmap method", METHOD_NAMES, index=METHOD_NAMES.index(default_method),
                          key=f"{key}_method",
                          help="The default is the method whose heatmaps pointed inside the lesion most often on test.")
    options = ["predicted class", *CLASSES]
    target = c2.selectbox("Explain class", options, key=f"{key}_target",
                          format_func=lambda c: c if c == "predicted class" else label(c))
    opacity = c3.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key=f"{key}_opacity")
    c3.markdown(heatmap_scale(), unsafe_allow_html=True)
    c3.caption("Heatmap colours: blue, little influence on the class explained; red, the most")
    return method, None if target == "predicted class" else target, opacity


def _pdf(analysis: Analysis, photos: Sequence[Photo], card: ModelCard, opacity: float) -> bytes:
    from skin_model.interop import pdf  # fpdf2 and its font tools load only once a report is asked for

    return pdf.pdf_report(analysis.prediction, [p.image for p in photos], [p.name for p in photos], card,
                          heatmaps=analysis.heatmaps, opacity=opacity, dates=[p.date for p in photos],
                          dates_entered=[p.date_entered for p in photos])


def _fhir(analysis: Analysis, photos: Sequence[Photo], card: ModelCard) -> str:
    from skin_model.interop import fhir  # the FHIR models (pydantic) load only once a report is asked for

    return fhir.to_json(fhir.diagnostic_report(analysis.prediction, [p.image for p in photos],
                                               [p.name for p in photos], card, dates=[p.date for p in photos],
                                               dates_entered=[p.date_entered for p in photos]))


def downloads(analysis: Analysis, photos: Sequence[Photo], card: ModelCard, key: str, opacity: float) -> None:
    """PDF and FHIR downloads of this analysis, its heatmaps drawn as shown (method, class, `opacity`). Each
    is built in memory when its button is clicked, not on every rerun (each move of the opacity slider would
    rebuild both). When every photo was refused there is no finding to report: no buttons, and why."""
    prediction = analysis.prediction
    if not prediction.answered_any():
        st.info("No report to download: none of the photos could be analysed as a dermatoscopic photo of a "
                "lesion (see above).")
        return
    c1, c2 = st.columns(2)
    c1.download_button("⬇ PDF report", lambda: _pdf(analysis, photos, card, opacity),
                       file_name="skin-lesion-report.pdf", mime="application/pdf", on_click="ignore",
                       key=f"{key}_pdf")
    c2.download_button("⬇ FHIR R4 DiagnosticReport (JSON)", lambda: _fhir(analysis, photos, card),
                       file_name="skin-lesion-report.fhir.json", mime="application/fhir+json", on_click="ignore",
                       key=f"{key}_fhir")


def require_predictor() -> Predictor:
    """The predictor the frame loaded, for a view that cannot go on without it: otherwise the frame's
    one message, and the page stops."""
    predictor = st.session_state.get(PREDICTOR_KEY)
    if predictor is None:
        st.error(st.session_state.get(PROBLEM_KEY) or "The model could not be loaded.")
        st.stop()
    return predictor


def release_freed_memory() -> None:
    """Hand the memory an analysis freed back to the system. glibc keeps freed blocks in the
    malloc arena of the thread that freed them, and Streamlit runs every rerun in a new
    thread: without this the app grew by about 100 MB over its first 20 analyses."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


@st.cache_data(max_entries=64, show_spinner="Scoring the photos and drawing their heatmaps…")
def _analysis(weights: str | None, digests: tuple[str, ...], context: tuple[float | None, str | None, str | None],
              sequence: bool | None, method: str, target: str | None, _predictor: Predictor,
              _images: list[Image.Image]) -> Analysis:
    """Cached by everything that changes the result (the images themselves are keyed by their digests)."""
    age, sex, site = context
    result = _predictor.analyse(_images, age=age, sex=sex, site=site, sequence=sequence, method=method,
                                target=target)
    release_freed_memory()  # the photos were just scored and explained: the largest allocations are over
    return result


def analyse(predictor: Predictor, photos: Sequence[Photo], context: dict[str, float | str | None], method: str,
            target: str | None, sequence: bool | None = None) -> Analysis:
    """The prediction and the heatmaps of these photos (in this order), from one forward of the model."""
    return _analysis(predictor.card.sha256, tuple(p.digest for p in photos),
                     (context.get("age"), context.get("sex"), context.get("site")), sequence, method, target,
                     predictor, [p.image for p in photos])
