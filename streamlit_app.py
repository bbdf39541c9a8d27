"""Skin-lesion analysis demo: the entry script only sets up navigation."""

import streamlit as st

st.set_page_config(page_title="Skin lesion analysis (research demo)", page_icon="🔬", layout="wide")

pages = [
    st.Page("app_pages/classify.py", title="Classify", icon="🔍", default=True),
    st.Page("app_pages/evolution.py", title="Lesion evolution", icon="📈"),
    st.Page("app_pages/explorer.py", title="Dataset explorer", icon="🗂️"),
    st.Page("app_pages/model_card.py", title="Model card & about", icon="📄"),
]
st.navigation(pages).run()
