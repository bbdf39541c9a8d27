"""Skin-lesion analysis demo: the frame around the pages.

Everything every page shares is done here, once per rerun: the page config, the model
(loaded once per process; a failure to load it becomes one message, here), and the
sidebar with the device and the disclaimer. The frame hands the predictor (or why there
is none) to the pages through the session state; the pages are views, and the ones that
need the model show the frame's message and stop (`views.require_predictor`), while the
explorer still works.
"""

import importlib
import threading
from concurrent.futures import Future

import streamlit as st

from app_pages import PREDICTOR_KEY, PROBLEM_KEY
from skin_model import Predictor, load_predictor
from skin_model.constants import DISCLAIMER


def _load(future: Future[Predictor]) -> None:
    """The model first (the pages wait for it), then what only a photo's analysis needs, the heatmap graph
    and plotly: they load while the visitor picks a photo (the engine's lock makes a first analysis wait)."""
    try:
        predictor = load_predictor()
    except Exception as exc:  # missing or altered weights: the frame shows why
        future.set_exception(exc)
        return
    future.set_result(predictor)
    try:
        predictor.prepare_heatmaps()
    except Exception:  # the first analysis loads it again and reports what fails there
        pass
    importlib.import_module("plotly.graph_objects")


@st.cache_resource(show_spinner=False)
def model_loading() -> Future[Predictor]:
    """One predictor per process (weights: SKIN_MODEL_WEIGHTS, else the shipped ones), loaded in a thread
    started on the first page's first run, so that the pages' own imports run meanwhile.
    Its probabilities and heatmaps come from ONNX Runtime, without torch."""
    future: Future[Predictor] = Future()
    threading.Thread(target=_load, args=(future,), name="skin-model-load", daemon=True).start()
    return future


loading = model_loading()
st.set_page_config(page_title="Skin lesion analysis (research demo)", page_icon="🔬", layout="wide")
page = st.navigation([
    st.Page("app_pages/classify.py", title="Classify", icon="🔍", default=True),
    st.Page("app_pages/evolution.py", title="Lesion evolution", icon="📈"),
    st.Page("app_pages/explorer.py", title="Dataset explorer", icon="🗂️"),
    st.Page("app_pages/model_card.py", title="Model card & about", icon="📄"),
])
importlib.import_module("app_pages.views")  # what every page draws with, imported while the model loads
try:
    with st.spinner("Loading the model…"):
        predictor, problem = loading.result(), None
except Exception as exc:  # one message, never a traceback; not kept, so the next run tries again
    model_loading.clear()
    predictor, problem = None, f"The model could not be loaded: {exc}"
st.session_state[PREDICTOR_KEY], st.session_state[PROBLEM_KEY] = predictor, problem
with st.sidebar:
    if predictor is not None:
        st.caption(f"Model runs on: **{predictor.device_name}**")
    else:
        st.error(problem)
    st.warning(DISCLAIMER, icon="⚠️")

page.run()
