"""The app's pages (views) and what they share. The frame (`streamlit_app.py`) hands the loaded
predictor, or why there is none, to the pages in the session state under these keys."""

PREDICTOR_KEY, PROBLEM_KEY = "predictor", "model_problem"
