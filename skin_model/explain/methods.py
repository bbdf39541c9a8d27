"""The heatmap methods the app offers and which one it shows first: torch-free, so the pages can
list them (and the model card's figures can choose one) before Grad-CAM has loaded."""

from __future__ import annotations

from skin_model.model.card import ModelCard

METHOD_NAMES: tuple[str, ...] = ("Grad-CAM", "Grad-CAM++", "LayerCAM", "EigenCAM (gradient-free)")
DEFAULT_METHOD = "Grad-CAM"
# Shows the photo's dominant component whatever the class asked for: offered, never the default.
CLASS_AGNOSTIC = frozenset({"EigenCAM (gradient-free)"})


def default_method(card: ModelCard | None) -> str:
    """The class-discriminative CAM method whose heatmaps fell inside the lesion most often
    on test (pointing game in the model card), else Grad-CAM. The app's heatmap answers
    "what made the model say this class", which a class-agnostic method cannot."""
    scores = card.heatmap_scores() if card is not None else {}
    measured = {m: v["pointing_game"] for m, v in scores.items() if m in METHOD_NAMES and m not in CLASS_AGNOSTIC}
    return max(measured, key=measured.get) if measured else DEFAULT_METHOD
