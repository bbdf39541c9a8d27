"""Skin-lesion analysis on HAM10000: a CNN-LSTM over one or several photos of a lesion.

The names below load on first use (PEP 562), so `import skin_model.constants` or
`skin-model --help` does not pay for torch."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from skin_model.constants import VERSION

if TYPE_CHECKING:
    from skin_model.constants import CLASS_NAMES, CLASSES, MALIGNANT
    from skin_model.io.images import ImageError, load_image
    from skin_model.predict import Prediction, Predictor, load_predictor

_WHERE = {
    "CLASSES": "skin_model.constants", "CLASS_NAMES": "skin_model.constants", "MALIGNANT": "skin_model.constants",
    "ImageError": "skin_model.io.images", "load_image": "skin_model.io.images",
    "Prediction": "skin_model.predict", "Predictor": "skin_model.predict", "load_predictor": "skin_model.predict",
}
__all__ = ["CLASSES", "CLASS_NAMES", "MALIGNANT", "ImageError", "Prediction", "Predictor", "load_image",
           "load_predictor"]
__version__ = VERSION


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'skin_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
