"""Skin-lesion analysis demo: the frame around the pages.

Everything every page shares is done here, once per rerun: the page config, the model
(loaded once per process; a failure to load it becomes one message, here), and the
sidebar with the device and the disclaimer. The frame hands the predictor (or why there
is none) to the pages through the session state; the pages are views, and the ones that
need the model show the frame's message and stop (`views.require_predictor`), while the
explorer still works.
"""

import streamlit as st

from app_pages.views import PREDICTOR_KEY, PROBLEM_KEY
from skin_model import Predictor, load_predictor
from skin_model.constants import DISCLAIMER


@st.cache_resource(show_spinner="Loading the model…")
def shared_predictor() -> Predictor:
    """One predictor per process (weights: SKIN_MODEL_WEIGHTS, else the shipped ones), with what heatmaps
    need loaded now: every analysis draws them. Its probabilities and heatmaps come from ONNX Runtime,
    ready in a fraction of a second, without torch."""
    predictor = load_predictor()
    predictor.prepare_heatmaps()
    return predictor


st.set_page_config(page_title="Skin lesion analysis (research demo)", page_icon="🔬", layout="wide")
page = st.navigation([
    st.Page("app_pages/classify.py", title="Classify", icon="🔍", default=True),
    st.Page("app_pages/evolution.py", title="Lesion evolution", icon="📈"),
    st.Page("app_pages/explorer.py", title="Dataset explorer", icon="🗂️"),
    st.Page("app_pages/model_card.py", title="Model card & about", icon="📄"),
])
try:
    predictor, problem = shared_predictor(), None
except Exception as exc:  # missing or altered weights: one message, never a traceback (not cached: retried)
    predictor, problem = None, f"The model could not be loaded: {exc}"
st.session_state[PREDICTOR_KEY], st.session_state[PROBLEM_KEY] = predictor, problem
with st.sidebar:
    if predictor is not None:
        st.caption(f"Model runs on: **{predictor.device_name}**")
    else:
        st.error(problem)
    st.warning(DISCLAIMER, icon="⚠️")

page.run()
