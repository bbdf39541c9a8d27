"""Constants shared by training, prediction and the app.

They are also written into the model card that travels with the weights, and
the predictor checks the card against them, so the app and training can never
disagree about classes, normalisation or input size.
"""

from __future__ import annotations

VERSION: str = "0.1.0"  # the package version (pyproject.toml holds the same)

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}
MALIGNANT: frozenset[str] = frozenset({"akiec", "bcc", "mel"})
# In plain words, for people who do not read dermatology: what each diagnosis is, and whether it is malignant.
CLASS_DESCRIPTIONS: dict[str, str] = {
    "akiec": "Rough, scaly patches from sun damage (actinic keratoses) and the earliest, surface-only form of "
             "squamous cell carcinoma (Bowen's disease). Pre-cancerous to malignant: treated when found.",
    "bcc": "The most common skin cancer. It grows slowly and rarely spreads, but it destroys the tissue around it "
           "if left alone. Malignant.",
    "bkl": "Harmless growths of the skin's surface: seborrhoeic keratoses, solar lentigines (sun spots) and "
           "lichen-planus-like keratoses. Benign, though some look like melanoma.",
    "df": "A small, firm bump in the skin, often on the legs, perhaps after a minor injury or insect bite. Benign.",
    "mel": "A cancer of the skin's pigment cells. It can spread to other organs, so it is the diagnosis that "
           "matters most to catch early. Malignant.",
    "nv": "An ordinary mole: a cluster of pigment cells. Benign; by far the most common lesion in HAM10000.",
    "vasc": "Lesions of the blood vessels: cherry angiomas, angiokeratomas, pyogenic granulomas and bleeding "
            "spots. Benign.",
}
# Photos per diagnosis in HAM10000 (its metadata table, 10,015 photos): how common each class is in the data.
HAM10000_PHOTOS: dict[str, int] = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705,
                                   "vasc": 142}

# Shown by the app and printed on every report and export.
DISCLAIMER: str = (
    "Research demo, not a medical device. It has not been clinically validated and must not be used "
    "to diagnose, treat or rule out skin cancer. See a dermatologist about any lesion that worries you."
)

# EfficientNet-Lite was trained on ImageNet with inputs scaled to [-1, 1].
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_SIZE: int = 160  # the training default; a model card may name another
BACKBONE: str = "efficientnet-lite0"
BACKBONES: tuple[str, ...] = tuple(f"efficientnet-lite{i}" for i in range(5))  # see model/backbones.py
MAX_SEQUENCE: int = 8

# Patient context (HAM10000 metadata columns); every field is optional.
SEXES: tuple[str, ...] = ("male", "female")
SITES: tuple[str, ...] = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital",
    "hand", "lower extremity", "neck", "scalp", "trunk", "upper extremity",
)
META_DIM: int = 2 + len(SEXES) + len(SITES)
# How HAM10000 confirmed each diagnosis (its `dx_type` column), in words.
CONFIRMATION: dict[str, str] = {
    "histo": "histopathology", "follow_up": "follow-up examination", "consensus": "expert consensus",
    "confocal": "in-vivo confocal microscopy",
}

# Decoding limits: bigger images are refused before they are decoded.
MAX_PIXELS: int = 60_000_000
MIN_SIDE: int = 16

METADATA_FILE: str = "HAM10000_metadata.csv"  # the dataset's own name for its table
WEIGHTS_FILE: str = "skin_model.safetensors"
# The same weights exported for ONNX Runtime (the serving engine): the photo forward, the sequence read, and the
# photo forward with what Grad-CAM reads.
ONNX_PHOTO_FILE: str = "skin_model.onnx"
ONNX_SEQUENCE_FILE: str = "skin_model_sequence.onnx"
ONNX_HEATMAP_FILE: str = "skin_model_heatmap.onnx"
CARD_FILE: str = "model_card.json"
