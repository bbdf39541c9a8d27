"""Dataset explorer: filter HAM10000, chart it, page through photos, send one to
the classifier, and run all photos of one lesion as a sequence."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import views
from skin_model import CLASS_NAMES, Predictor
from skin_model.data.ham10000 import DatasetError, load_ham10000
from skin_model.io.images import Photo, decode_upload
from skin_model.predict import Prediction

PAGE_SIZE = 12
AGE_BINS = np.arange(0, 95, 5)  # HAM10000 gives ages in steps of 5 years, 0 to 85
AGE_BANDS = [f"{a}-{a + 4}" for a in AGE_BINS[:-2]] + ["85+"]
# Neutral colours for sex: red and orange mean a malignant class everywhere in the app.
SEX_COLOURS = {"female": "#8e6bbf", "male": "#4c9bb0", "unknown": "#bdbdbd"}


# The charts are built with plotly's graph objects: plotly express took about 50 ms a figure, most of a
# filter's rerun. Each diagnosis keeps its colour whatever the filters (views.CLASS_COLOURS).
def diagnosis_chart(view: pd.DataFrame) -> go.Figure:
    """Photos per diagnosis, sorted by count (the largest on top), one trace per class in its colour."""
    counts = view.dx.value_counts(ascending=True)
    fig = go.Figure([go.Bar(x=[n], y=[CLASS_NAMES[code]], name=CLASS_NAMES[code], orientation="h",
                            marker_color=views.CLASS_COLOURS[code], hovertemplate="%{y}: %{x:,} photos<extra></extra>")
                     for code, n in counts.items()])
    return fig.update_layout(title="Diagnoses", showlegend=False, xaxis_title="photos", height=360,
                             yaxis=dict(categoryorder="array", categoryarray=[CLASS_NAMES[c] for c in counts.index]))


def age_chart(view: pd.DataFrame) -> go.Figure:
    """Photos per 5-year age band, stacked by diagnosis."""
    fig = go.Figure()
    for code, name in CLASS_NAMES.items():
        ages = view.age[view.dx == code].dropna()
        if not ages.empty:
            counts, _ = np.histogram(ages, AGE_BINS)
            fig.add_trace(go.Bar(x=AGE_BINS[:-1] + 2.5, y=counts, width=5, name=name,
                                 marker_color=views.CLASS_COLOURS[code], customdata=AGE_BANDS,
                                 hovertemplate=f"{name}, age %{{customdata}}: %{{y:,}} photos<extra></extra>"))
    return fig.update_layout(title="Age", barmode="stack", bargap=0, xaxis_title="age (years)",
                             yaxis_title="photos", height=360)


def site_chart(view: pd.DataFrame) -> go.Figure:
    """Photos per body site, sorted by count."""
    counts = view.localization.value_counts(ascending=True)
    fig = go.Figure(go.Bar(x=counts.to_numpy(), y=list(counts.index), orientation="h", marker_color="#7f7f7f",
                           hovertemplate="%{y}: %{x:,} photos<extra></extra>"))
    return fig.update_layout(title="Localization", xaxis_title="photos", height=360, yaxis_dtick=1)  # every site named


def sex_chart(view: pd.DataFrame) -> go.Figure:
    """The patients' sex, as the dataset records it ("unknown" where it does not)."""
    counts = view.sex.fillna("unknown").value_counts()
    return go.Figure(go.Pie(labels=list(counts.index), values=counts.to_numpy(), sort=False,
                            marker_colors=[SEX_COLOURS.get(s, "#bdbdbd") for s in counts.index])
                     ).update_layout(title="Sex", height=360)


@st.cache_data(max_entries=16, show_spinner="Scoring the lesion's photos…")
def lesion_predictions(weights: str | None, paths: tuple[str, ...],
                       context: tuple[float | None, str | None, str | None],
                       _predictor: Predictor) -> tuple[list[Photo], Prediction, Prediction]:
    """A dataset lesion's photos and their sequence prediction, without and with the patient's context,
    kept per lesion (and weights): a filter that leaves the lesion shown does not score it again."""
    photos = [decode_upload(Path(p).name, Path(p).read_bytes()) for p in paths]
    images = [p.image for p in photos]
    age, sex, site = context
    return (photos, _predictor.predict(images, sequence=True),
            _predictor.predict(images, sequence=True, age=age, sex=sex, site=site))


st.title("🗂️ HAM10000 explorer")

with st.sidebar:
    folder = st.text_input("HAM10000 folder", value=os.environ.get("HAM10000_DIR", ""),
                           help="The folder holding HAM10000_metadata.csv and the images.")


@st.cache_data(show_spinner="Reading HAM10000…", max_entries=4)
def read_table(path: str) -> pd.DataFrame:
    """The metadata table (with each photo's path), read once per folder."""
    return load_ham10000(path).table


try:
    table = read_table(folder.strip()) if folder.strip() else None
    problem = None if table is not None else "No HAM10000 folder is set."
except DatasetError as exc:
    table, problem = None, str(exc)
if table is None:
    st.info(f"{problem}\n\nThe explorer needs a local copy of HAM10000 (Tschandl et al. 2018, CC BY-NC 4.0). "
            "Download it from the Harvard Dataverse (doi:10.7910/DVN/DBW86T): `HAM10000_metadata.csv` and the "
            "two image archives, unpacked into `HAM10000_images_part_1/` and `HAM10000_images_part_2/`. Then "
            "type the folder's path in the sidebar or start the app with `HAM10000_DIR=/path/to/ham10000`. "
            "The other pages work without it.")
    st.stop()

with st.expander("Filters", expanded=True):
    c1, c2, c3 = st.columns(3)
    dx = c1.multiselect("Diagnosis", sorted(table.dx.unique()), format_func=lambda c: f"{CLASS_NAMES[c]} ({c})")
    dx_type = c2.multiselect("Confirmed by (dx_type)", sorted(table.dx_type.dropna().unique()))
    sex = c3.multiselect("Sex", sorted(table.sex.dropna().unique()))
    c4, c5 = st.columns([2, 1])
    site = c4.multiselect("Localization", sorted(table.localization.dropna().unique()))
    ages = table.age.dropna()
    age = c5.slider("Age", int(ages.min()), int(ages.max()), (int(ages.min()), int(ages.max())))

view = table
for column, chosen in (("dx", dx), ("dx_type", dx_type), ("sex", sex), ("localization", site)):
    if chosen:
        view = view[view[column].isin(chosen)]
if age != (int(ages.min()), int(ages.max())):
    view = view[view.age.between(*age)]
m1, m2 = st.columns(2)
m1.metric("Photos matching", f"{len(view):,}")
m2.metric("Lesions they show", f"{view.lesion_id.nunique():,}")
if view.empty:
    st.warning("No photo matches these filters.")
    st.stop()

c1, c2 = st.columns(2)
with c1:
    views.chart(diagnosis_chart(view), key="dx_chart")
with c2:
    views.chart(age_chart(view), key="age_chart")
c3, c4 = st.columns(2)
with c3:
    views.chart(site_chart(view), key="site_chart")
with c4:
    views.chart(sex_chart(view), key="sex_chart")

st.subheader("Gallery")
pages = max(1, -(-len(view) // PAGE_SIZE))
page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1)
cols = st.columns(4)
for i, row in enumerate(view.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE].itertuples()):
    with cols[i % 4]:
        st.image(row.path, caption=f"{row.image_id} · {row.dx} · {row.lesion_id}", width="stretch")
        if st.button("Analyse", key=f"analyse_{row.image_id}"):
            st.session_state["analyse_paths"] = [row.path]
            # What the dataset knows goes along: the diagnosis and its confirmation are shown beside the
            # analysis, and age, sex and site fill the Classify page's patient context.
            st.session_state["analyse_known"] = {"image_id": row.image_id, "dx": row.dx, "dx_type": row.dx_type}
            views.prefill_patient_context("classify", row.age, row.sex, row.localization)
            st.switch_page("app_pages/classify.py")

st.subheader("One lesion, all its photos")
multi = view.groupby("lesion_id").size()
multi = sorted(multi[multi >= 2].index)
if not multi:
    st.info("No lesion with several photos matches the filters.")
    st.stop()
lesion_id = st.selectbox(f"Lesion ({len(multi)} with two or more photos)", multi)
rows = view[view.lesion_id == lesion_id].sort_values("image_id")
truth = rows.dx.iloc[0]
st.caption(f"Ground truth: **{CLASS_NAMES[truth]} ({truth})**, confirmed by {rows.dx_type.iloc[0]}; "
           f"photos read in image-id order (HAM10000 has no dates).")
predictor = views.require_predictor()
first = rows.iloc[0]
photos, prediction, context = lesion_predictions(predictor.card.sha256, tuple(rows.path),
                                                 (first.age, first.sex, first.localization), predictor)
if prediction.sequence is None:
    st.warning("None of this lesion's photos passed the out-of-distribution check.")
    st.stop()
left, right = st.columns([1, 2])
slot = left.empty()  # the verdict goes above its chart, sent after it: it never shows before what it reads
with right:
    views.chart(views.probability_chart(prediction.sequence, "Sequence prediction"), key="lesion_seq")
with slot.container():
    views.verdict(prediction.sequence_decision())
    if context.sequence is not None:
        code, p = context.top(context.sequence)
        st.caption(f"With the patient's age, sex and site: {CLASS_NAMES[code]} ({p:.0%})")
cols = st.columns(min(len(photos), 4))
for i, photo in enumerate(photos):
    with cols[i % len(cols)]:
        st.image(photo.image, caption=photo.name, width="stretch")
        views.verdict(prediction.decision(i))
