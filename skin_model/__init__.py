"""Skin-lesion analysis on HAM10000: a CNN-LSTM over one or several photos of a lesion."""

from .constants import CLASS_NAMES, CLASSES, MALIGNANT
from .images import ImageError, load_image
from .predict import Prediction, Predictor, load_predictor

__all__ = ["CLASSES", "CLASS_NAMES", "MALIGNANT", "ImageError", "Prediction", "Predictor", "load_image",
           "load_predictor"]
__version__ = "0.1.0"
