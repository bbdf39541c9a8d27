"""The Streamlit app, page by page, through streamlit.testing (AppTest).

The model is swapped for a small untrained stub (SKIN_MODEL_WEIGHTS), so the
tests neither need nor wait for the shipped weights, and every figure the app
shows is compared with what `skin_model` itself computes for the same photos.
The explorer tests and the shipped model card test skip when their data is absent.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pypdf
import pytest
import streamlit as st
import torch
from helpers import QUALITY_ONLY_OOD
from PIL import Image, ImageDraw
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from app_pages import PREDICTOR_KEY, views
from skin_model import CLASS_NAMES, CLASSES, MALIGNANT, load_image, load_predictor
from skin_model.constants import CONFIRMATION
from skin_model.engine import preprocess
from skin_model.explain.cam import METHODS
from skin_model.interop import fhir
from skin_model.interop import pdf as report
from skin_model.io.images import ACCEPTED_SUFFIXES, FORMAT_NAMES
from skin_model.metrics import bootstrap_intervals, classification_report
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard, TrustSettings
from skin_model.model.network import SkinLesionNet
from skin_model.predict import Predictor
from skin_model.trust.decision import decide
from skin_model.trust.triage import TriageRule

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "streamlit_app.py"
SHIPPED_CARD = REPO / "weights" / "model_card.json"
HAM_DIR = Path(os.environ.get("HAM10000_DIR") or REPO.parent / "shared" / "ham10000").expanduser()
HAM_CSV = HAM_DIR / "HAM10000_metadata.csv"
TIMEOUT = 120  # the CPU may be shared with a training run
DISCLAIMER = "not a medical device"


# ----------------------------------------------------------------------------- photos


def _synthetic_photo(seed: int) -> Image.Image:
    """A dermoscopy-like photo (brown ellipse on noisy skin), used only when HAM10000 is absent."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (200, 150), (226, 178, 152))
    cx, cy = 70 + 12 * seed, 60 + 5 * seed
    ImageDraw.Draw(img).ellipse((cx - 35 - 3 * seed, cy - 28, cx + 35, cy + 28), fill=(96 - 9 * seed, 58, 36))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(150, 200, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def lesion_photos() -> list[tuple[str, bytes]]:
    """Three (name, JPEG bytes) photos of one real HAM10000 lesion in image-id order, else synthetic ones."""
    if HAM_CSV.is_file():
        table = pd.read_csv(HAM_CSV)
        sizes = table.groupby("lesion_id").size()
        lesion = sorted(sizes[sizes >= 3].index)[0]
        ids = sorted(table[table.lesion_id == lesion].image_id)[:3]
        paths = [next(HAM_DIR.glob(f"**/{i}.jpg")) for i in ids]
        return [(p.name, p.read_bytes()) for p in paths]
    return [(f"synthetic_{i}.jpg", _jpeg(_synthetic_photo(i))) for i in range(3)]


def _exif_date(day: datetime.date) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = f"{day:%Y:%m:%d} 10:30:00"  # ExifIFD DateTimeOriginal
    return exif


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def stub_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained SkinLesionNet (seed 0), never the shipped weights.

    Its BatchNorm statistics are first estimated on a few photos: with PyTorch's
    default statistics every photo would get the same probabilities, and the
    value checks below (per-photo charts, photo order) would pass vacuously.
    """
    torch.manual_seed(0)
    model = SkinLesionNet(pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model.features(preprocess([_synthetic_photo(i) for i in range(6)]))
    model.eval()
    directory = tmp_path_factory.mktemp("stub_weights")
    checkpoint.save(model, directory, ModelCard(name="tiny test stub"))
    return directory


@pytest.fixture(scope="module")
def reference(stub_weights: Path):
    """The same stub, loaded outside the app, to recompute what the app should show."""
    return load_predictor(stub_weights, device="cpu")


def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, stub_weights: Path) -> Path:
    """Stub weights, CPU, no HAM10000 folder and empty Streamlit caches for each test."""
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(stub_weights))
    monkeypatch.setenv("SKIN_MODEL_DEVICE", "cpu")
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    _clear_caches()
    yield stub_weights
    _clear_caches()


@pytest.fixture
def guarded_env(monkeypatch: pytest.MonkeyPatch, app_env: Path, tmp_path: Path) -> Path:
    """The stub with an out-of-distribution check that refuses blank or uniform images (and nothing else)."""
    model, card = checkpoint.load(app_env)
    guarded = tmp_path / "guarded_weights"
    checkpoint.save(model, guarded, dataclasses.replace(card, trust=TrustSettings(ood=QUALITY_ONLY_OOD)))
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(guarded))
    return guarded


def _blank_jpeg() -> bytes:
    """A uniform grey photo: refused by the stub's out-of-distribution check in `guarded_env`."""
    return _jpeg(Image.new("RGB", (200, 150), (128, 128, 128)))


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def ham10000(monkeypatch: pytest.MonkeyPatch, app_env: Path) -> pd.DataFrame:
    """HAM10000_DIR set to the real data; its metadata table. Skips when the data is absent."""
    if not HAM_CSV.is_file():
        pytest.skip(f"HAM10000 not found at {HAM_DIR} (set HAM10000_DIR to a folder with HAM10000_metadata.csv)")
    monkeypatch.setenv("HAM10000_DIR", str(HAM_DIR))
    return pd.read_csv(HAM_CSV)


# ----------------------------------------------------------------------------- reading the page


def _array(value) -> list:
    """A plotly JSON array, which plotly >= 6 may store as base64 typed data."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value)


def charts(at: AppTest) -> dict[str, dict]:
    """Every plotly chart on the page (sidebar included), by key, as its figure JSON."""
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def bar_probs(fig: dict) -> dict[str, float]:
    """A probability chart read back as {class code: probability}, checking its labels on the way."""
    bar = fig["data"][0]
    assert bar["type"] == "bar" and bar["orientation"] == "h"
    codes, labels, values = _array(bar["customdata"]), _array(bar["y"]), _array(bar["x"])
    assert sorted(codes) == sorted(CLASSES)
    for code, label in zip(codes, labels, strict=True):
        name = "Actinic keratosis / IEC" if code == "akiec" else CLASS_NAMES[code]
        assert label.startswith(name), label  # (nearly) full class names on the bars
        assert label.endswith("⚠") == (code in MALIGNANT)
    assert values == sorted(values), "bars are sorted by probability"
    return dict(zip(codes, values, strict=True))


def assert_probs(chart: dict[str, float], expected: dict[str, float]) -> None:
    assert sum(chart.values()) == pytest.approx(1.0, abs=1e-4)
    assert chart == pytest.approx(expected, abs=1e-5)


def verdicts(at: AppTest) -> list[str]:
    """Decision headlines in the main area, in page order (each is an alert in bold)."""
    return [node.value for node in at.main if getattr(node, "type", None) in ("success", "error", "warning")
            and node.value.startswith("**") and node.value.rstrip(".").endswith("**")
            and "Upload a sharp" not in node.value]


def assert_verdicts(at: AppTest, probs: list[dict[str, float]], reference) -> None:
    """The page shows exactly the headlines the package decides (trust.decision.decide) for these
    probabilities, with the reference predictor's thresholds."""
    shown = verdicts(at)
    assert len(shown) == len(probs), shown
    for text, p in zip(shown, probs, strict=True):
        assert text == f"**{decide(p, reference.inconclusive_below, reference.triage).headline}**", (text, p)


def upload(at: AppTest, files: list[tuple[str, bytes]], index: int = 0) -> AppTest:
    at.file_uploader[index].set_value([(name, data, "image/jpeg") for name, data in files])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at



def record_downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """File name -> the callable that builds it when its download button is clicked."""
    deferred: dict[str, object] = {}
    add_deferred = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        deferred[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return deferred


def pdf_words(data: bytes) -> str:
    """The text of a PDF, whitespace collapsed."""
    return " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages).split())

# ----------------------------------------------------------------------------- classify


def test_classify_without_upload_prompts_and_shows_device(app_env: Path) -> None:
    at = _app()
    assert at.title[0].value.endswith("Classify a skin lesion")
    assert any("Upload a photo to start" in i.value for i in at.main.info)
    assert charts(at) == {} and verdicts(at) == []
    assert len(at.image) == len(views.examples()) == 7  # only the example photos, nothing analysed
    assert any("Model runs on" in c.value and "CPU" in c.value for c in at.sidebar.caption)
    assert any(DISCLAIMER in w.value for w in at.sidebar.warning)


def test_classify_one_photo(app_env: Path, lesion_photos, reference) -> None:
    name, data = lesion_photos[0]
    at = upload(_app(), [(name, data)])
    figs = charts(at)
    assert set(figs) == {"chart_0"}, "one probability chart, no sequence chart for one photo"
    expected = reference.predict([load_image(data)]).photos[0]
    assert_probs(bar_probs(figs["chart_0"]), expected)
    assert_verdicts(at, [expected], reference)
    assert [s.value for s in at.subheader] == [name]
    captions = [c for img in at.image for c in img.captions]
    assert captions[0] == "photo"
    assert captions[1].startswith("Grad-CAM: where the model looked for ")
    assert captions[1].endswith(CLASS_NAMES[max(expected, key=expected.get)]), "heatmap of the predicted class"
    assert len(at.main.info) == 0
    assert not [e.value for e in at.main.error if e.value.startswith("Not analysed:")]


def test_classify_several_photos_adds_sequence_chart(app_env: Path, lesion_photos, reference) -> None:
    at = upload(_app(), lesion_photos)
    figs = charts(at)
    assert set(figs) == {"sequence_chart", "chart_0", "chart_1", "chart_2"}
    images = [load_image(data) for _, data in lesion_photos]
    expected = reference.predict(images)
    assert_probs(bar_probs(figs["sequence_chart"]), expected.sequence)
    for i, probs in enumerate(expected.photos):
        assert_probs(bar_probs(figs[f"chart_{i}"]), probs)
    assert at.subheader[0].value == "Sequence prediction over 3 photos of the lesion"
    assert f"Combines {reference.sequence_method}." in [c.value for c in at.caption]
    assert [s.value for s in at.subheader[1:]] == [name for name, _ in lesion_photos]
    assert_verdicts(at, [expected.sequence, *expected.photos], reference)
    assert len(at.image) == 2 * len(lesion_photos)  # photo + heatmap each


def test_classify_broken_uploads_are_reported_and_the_good_photo_analysed(app_env: Path, lesion_photos,
                                                                          reference) -> None:
    good_name, good = lesion_photos[0]
    broken = [("notes.jpg", b"this is a text file, not a photo\n"), ("empty.jpg", b""),
              ("truncated.jpg", good[: len(good) // 2])]
    at = upload(_app(), [broken[0], (good_name, good), *broken[1:]])
    errors = [e.value for e in at.main.error if e.value.startswith("Not analysed:")]
    assert len(errors) == 3
    for (name, _), message in zip(broken, errors, strict=True):
        assert message.startswith(f"Not analysed: {name}")
    assert "empty" in errors[1] and "truncated" in errors[2]
    figs = charts(at)
    assert set(figs) == {"chart_0"}, "only the good photo is analysed (no sequence of one)"
    assert_probs(bar_probs(figs["chart_0"]), reference.predict([load_image(good)]).photos[0])
    assert [s.value for s in at.subheader] == [good_name]
    assert not at.exception


def test_classify_only_broken_uploads_prompt_again(app_env: Path) -> None:
    at = upload(_app(), [("broken.jpg", b"GIF89a but not really")])
    assert any("broken.jpg" in e.value for e in at.main.error)
    assert any("Upload a photo to start" in i.value for i in at.main.info)
    assert charts(at) == {}


def _count_model_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each call of Predictor.analyse and Predictor.predict (the app's predictor is one)."""
    calls: list[str] = []
    for name in ("analyse", "predict"):
        original = getattr(Predictor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Predictor, name, counted)
    return calls


def test_classify_heatmap_controls_and_patient_context(app_env: Path, lesion_photos, reference,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_model_calls(monkeypatch)
    name, data = lesion_photos[0]
    at = upload(_app(), [(name, data)])
    assert calls == ["analyse"], "prediction and heatmaps come from one analysis"
    first_heatmap = at.image[1].value
    at.slider(key="classify_opacity").set_value(0.9).run()
    assert not at.exception
    assert at.image[1].value != first_heatmap, "a new overlay for a new opacity"
    assert calls == ["analyse"], "moving the opacity slider does not run the model again"
    assert at.image[0].captions == ["photo"]
    for method, target in zip(METHODS, ["mel", "nv", "bcc", "vasc"], strict=True):
        at.selectbox(key="classify_method").set_value(method)
        at.selectbox(key="classify_target").set_value(target)
        at.run()
        assert not at.exception, (method, [e.value for e in at.exception])
        assert at.image[1].captions == [f"{method}: where the model looked for {CLASS_NAMES[target]}"]
        assert set(charts(at)) == {"chart_0"}
    at.number_input(key="classify_age").set_value(70)
    at.selectbox(key="classify_sex").set_value("male")
    at.selectbox(key="classify_site").set_value("back")
    at.run()
    assert not at.exception
    assert "predict" not in calls, "the page runs one analysis, not a separate prediction"
    expected = reference.predict([load_image(data)], age=70.0, sex="male", site="back").photos[0]
    assert_probs(bar_probs(charts(at)["chart_0"]), expected)


def test_classify_heatmaps_explain_the_class_shown(app_env: Path, lesion_photos, reference) -> None:
    """With "predicted class", every method's heatmap is for the class the user is shown, patient context included."""
    name, data = lesion_photos[0]
    at = upload(_app(), [(name, data)])
    at.number_input(key="classify_age").set_value(70)
    at.selectbox(key="classify_sex").set_value("male")
    at.selectbox(key="classify_site").set_value("back")
    expected = reference.predict([load_image(data)], age=70.0, sex="male", site="back").photos[0]
    shown_class = CLASS_NAMES[max(expected, key=expected.get)]
    for method in METHODS:
        at.selectbox(key="classify_method").set_value(method).run()
        assert not at.exception, (method, [e.value for e in at.exception])
        assert_probs(bar_probs(charts(at)["chart_0"]), expected)
        assert at.image[1].captions == [f"{method}: where the model looked for {shown_class}"]


def test_reports_are_built_on_click_not_on_every_rerun(app_env: Path, lesion_photos,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    deferred = record_downloads(monkeypatch)
    built: list[str] = []
    pdf_report, diagnostic_report = report.pdf_report, fhir.diagnostic_report
    monkeypatch.setattr(report, "pdf_report", lambda *a, **k: built.append("pdf") or pdf_report(*a, **k))
    monkeypatch.setattr(fhir, "diagnostic_report", lambda *a, **k: built.append("fhir") or diagnostic_report(*a, **k))

    name, data = lesion_photos[0]
    at = upload(_app(), [(name, data)])
    at.slider(key="classify_opacity").set_value(0.9).run()
    assert not at.exception
    buttons = {b.key: b for b in at.get("download_button")}
    assert set(buttons) == {"classify_pdf", "classify_fhir"}
    assert all(b.proto.HasField("deferred_file_id") for b in buttons.values())
    assert built == [], "no report is built until its button is clicked"

    pdf = pypdf.PdfReader(io.BytesIO(deferred["skin-lesion-report.pdf"]()))
    assert built == ["pdf"] and name in " ".join(page.extract_text() for page in pdf.pages)
    bundle = fhir.parse_bundle(deferred["skin-lesion-report.fhir.json"]())
    assert built == ["pdf", "fhir"]
    assert [e.resource.get_resource_type() for e in bundle.entry].count("DiagnosticReport") == 1



def test_the_pdf_states_the_heatmaps_shown(app_env: Path, lesion_photos, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PDF built from the page names the heatmap method, class and opacity the page shows (it always said
    Grad-CAM and the predicted class, and drew at 0.45)."""
    deferred = record_downloads(monkeypatch)
    name, data = lesion_photos[0]
    at = upload(_app(), [(name, data)])
    at.selectbox(key="classify_method").set_value("LayerCAM")
    at.selectbox(key="classify_target").set_value("mel")
    at.slider(key="classify_opacity").set_value(0.9).run()
    assert not at.exception
    assert at.image[1].captions == [f"LayerCAM: where the model looked for {CLASS_NAMES['mel']}"]
    text = pdf_words(deferred["skin-lesion-report.pdf"]())
    assert "Heatmap: LayerCAM for Melanoma (mel)" in text and "opacity 90%" in text
    assert "Grad-CAM" not in text


def test_an_upload_is_never_pooled_with_the_dataset_photo(app_env: Path, lesion_photos, tmp_path: Path) -> None:
    """The photo the explorer sent shows another lesion than the user's own upload: the upload replaces it, and
    the two are never read as one sequence (they were, as "a sequence of 2 photos of the lesion")."""
    dataset_photo = tmp_path / "ISIC_0024306.jpg"
    dataset_photo.write_bytes(_jpeg(_synthetic_photo(5)))
    at = _app()
    at.session_state["analyse_paths"] = [str(dataset_photo)]
    at.session_state["analyse_known"] = {"image_id": "ISIC_0024306", "dx": "nv", "dx_type": "follow_up"}
    at.session_state["classify_age"], at.session_state["classify_sex"] = 45, "male"  # as the explorer fills them
    at.run()
    assert not at.exception
    assert [s.value for s in at.subheader] == [dataset_photo.name]
    assert at.number_input[0].value == 45
    name, data = lesion_photos[0]
    upload(at, [(name, data)])
    assert [s.value for s in at.subheader] == [name], "the user's photo alone, no sequence"
    assert set(charts(at)) == {"chart_0"}
    assert any("dataset photo" in i.value and "removed" in i.value and "age, sex and site were cleared" in i.value
               for i in at.main.info)
    assert at.number_input[0].value is None and at.selectbox(key="classify_sex").value == "unknown"
    assert "analyse_paths" not in at.session_state
    at.slider(key="classify_opacity").set_value(0.6).run()
    assert [s.value for s in at.subheader] == [name], "and it does not come back"


def test_triage_headline_leads_classify_and_evolution(app_env: Path, lesion_photos, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, reference) -> None:
    """With a triage rule the first alert of the page is the referral, in red, with its operating point
    (threshold 0 refers every photo, so this holds for any weights)."""
    model, card = checkpoint.load(app_env)
    rule = TriageRule(threshold=0.0, malignant=tuple(sorted(MALIGNANT)), sensitivity=0.9, specificity=0.7)
    checkpoint.save(model, tmp_path / "w", dataclasses.replace(card, trust=TrustSettings(triage=rule)))
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(tmp_path / "w"))
    for page, files in (("classify", lesion_photos[:2]), ("evolution", lesion_photos[:2])):
        at = upload(_app(None if page == "classify" else page), list(files))
        shown = verdicts(at)
        assert len(shown) == 3 and all(v.endswith(": see a dermatologist**") for v in shown), shown
        first = next(n for n in at.main if getattr(n, "type", None) in ("success", "error", "warning"))
        assert first.type == "error" and first.value == shown[0]
        assert any("specificity 70%" in c.value for c in at.main.caption)


@pytest.mark.skipif(not HAM_CSV.is_file(), reason=f"HAM10000 not found at {HAM_DIR}")
def test_the_melanoma_of_ham_0000492_is_referred(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case with the shipped weights: a histology-confirmed melanoma whose sequence was
    "Inconclusive: top class Melanocytic nevus" must say to see a dermatologist in its headline."""
    monkeypatch.delenv("SKIN_MODEL_WEIGHTS", raising=False)
    monkeypatch.setenv("SKIN_MODEL_DEVICE", "cpu")
    shipped = load_predictor(device="cpu")
    assert shipped.triage is not None, "the shipped card carries the triage rule"
    table = pd.read_csv(HAM_CSV)
    ids = sorted(table[table.lesion_id == "HAM_0000492"].image_id)
    assert len(ids) == 3 and set(table[table.lesion_id == "HAM_0000492"].dx) == {"mel"}
    files = [(f"{i}.jpg", next(HAM_DIR.glob(f"**/{i}.jpg")).read_bytes()) for i in ids]
    _clear_caches()
    try:
        at = upload(_app(), files)
        headline = verdicts(at)[0]
        assert headline.endswith(": see a dermatologist**") and "elanoma" in headline, headline
    finally:
        _clear_caches()


def test_evolution_with_one_photo_left_is_not_a_sequence(guarded_env: Path, lesion_photos) -> None:
    """One of two photos refused: the page says one photo was analysed, never "a sequence over 1 photo"."""
    at = upload(_app("evolution"), [("blank.jpg", _blank_jpeg()), lesion_photos[0]])
    assert any(w.value.startswith("Only one photo could be analysed") for w in at.main.warning)
    assert not [s.value for s in at.subheader if s.value.startswith("Sequence prediction")]
    assert "evo_sequence" not in charts(at)
    assert len(verdicts(at)) == 1  # the accepted photo's own decision


def test_no_report_buttons_when_every_photo_is_refused(guarded_env: Path, lesion_photos) -> None:
    at = upload(_app(), [("blank.jpg", _blank_jpeg())])
    assert any(w.value.startswith("**Not assessed: this image is blank") for w in at.main.warning)
    assert len(at.get("download_button")) == 0
    assert any("No report" in i.value and "none of the photos" in i.value for i in at.main.info)
    upload(at, [("blank.jpg", _blank_jpeg()), lesion_photos[0]])
    assert {b.key for b in at.get("download_button")} == {"classify_pdf", "classify_fhir"}

# ----------------------------------------------------------------------------- the frame


@pytest.mark.parametrize("page", ["classify", "evolution", "explorer", "model_card"])
def test_every_page_has_the_frame_sidebar_once(app_env: Path, reference, page: str) -> None:
    at = _app(None if page == "classify" else page)
    shown = [c.value for c in at.sidebar.caption if "Model runs on" in c.value]
    assert shown == [f"Model runs on: **{reference.device_name}**"]
    assert len([w for w in at.sidebar.warning if DISCLAIMER in w.value]) == 1
    assert not at.sidebar.error


# ----------------------------------------------------------------------------- missing weights


@pytest.mark.parametrize("page", ["classify", "evolution", "explorer", "model_card"])
def test_missing_weights_give_a_message_not_a_traceback(app_env: Path, tmp_path: Path, lesion_photos,
                                                         monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(empty))
    if HAM_CSV.is_file():
        monkeypatch.setenv("HAM10000_DIR", str(HAM_DIR))  # the explorer reaches its lesion view
    at = _app(None if page == "classify" else page)
    if at.file_uploader:
        upload(at, lesion_photos[:2])
    assert not at.exception
    assert any("The model could not be loaded" in e.value for e in at.sidebar.error)
    shown = [e.value for e in at.main.error if "could not be loaded" in e.value]
    if page != "explorer" or HAM_CSV.is_file():
        assert len(shown) == 1, "one clear message on the page"
        assert shown[0].startswith("The model could not be loaded: model card not found")
    else:
        assert shown == [] and at.title[0].value.endswith("HAM10000 explorer"), "the explorer works without a model"
    assert charts(at).keys() <= {"dx_chart", "age_chart", "site_chart", "sex_chart"}


def test_a_model_that_failed_to_load_is_tried_again_on_the_next_run(app_env: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The model loads in a thread while the first page imports what it draws with; a failure is shown,
    and not kept: once the weights are there, the next run loads them without a restart."""
    empty = tmp_path / "not_yet"
    empty.mkdir()
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(empty))
    at = _app(None)
    assert any("The model could not be loaded" in e.value for e in at.sidebar.error)
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(app_env))
    at.run()
    assert not at.exception and not at.sidebar.error
    assert any(c.value.startswith("Model runs on:") for c in at.sidebar.caption)


# ----------------------------------------------------------------------------- evolution


def test_evolution_needs_two_photos(app_env: Path, lesion_photos) -> None:
    at = _app("evolution")
    assert at.title[0].value.endswith("Lesion evolution")
    assert any("at least two photos" in i.value for i in at.main.info)
    upload(at, lesion_photos[:1])
    assert any("at least two photos" in i.value for i in at.main.info)
    assert charts(at) == {} and len(at.date_input) == 0 and len(at.dataframe) == 0


def test_evolution_never_invents_dates(app_env: Path, lesion_photos, reference,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Photos without an EXIF date get no date (they once got today minus 60 and 30 days, and today): the
    visits keep their upload order as visit 1, 2, 3, and a date the user enters is marked as entered on the
    page and in the PDF."""
    deferred = record_downloads(monkeypatch)
    names = [name for name, _ in lesion_photos]
    at = upload(_app("evolution"), lesion_photos)
    assert [d.value for d in at.date_input] == [None, None, None]
    expected = reference.predict([load_image(data) for _, data in lesion_photos], sequence=True)
    figs = charts(at)
    assert_probs(bar_probs(figs["evo_sequence"]), expected.sequence)  # in upload order

    def check(labels: list[str | None], sources: list[str]) -> None:
        shown = [label or f"visit {i + 1}" for i, label in enumerate(labels)]
        assert [img.captions[0] for img in at.image if " · " in img.captions[0]] == [
            f"{label} · {name}" for label, name in zip(shown, names, strict=True)]
        figs = charts(at)
        for key in ("evo_lines", "evo_changes"):
            assert figs[key]["layout"]["xaxis"]["ticktext"] == shown
        table = at.dataframe[0].value
        assert list(table.photo) == names and list(table.visit) == [1, 2, 3]
        assert [None if pd.isna(d) else d for d in table.date] == labels
        assert list(table["date from"]) == sources

    check([None, None, None], ["no date"] * 3)
    text = pdf_words(deferred["skin-lesion-report.pdf"]())
    assert all(f"visit {i}" in text for i in (1, 2, 3))
    invented = [f"{datetime.date.today() - datetime.timedelta(days=d):%Y-%m-%d}" for d in (30, 60)]
    assert not any(day in text for day in invented) and f"{names[0]} (" not in text

    next(d for d in at.date_input if d.label == names[1]).set_value(datetime.date(2020, 1, 1)).run()
    assert not at.exception
    check([None, "2020-01-01 (entered)", None], ["no date", "entered by you", "no date"])
    assert any("upload order" in c.value for c in at.main.caption), "not every photo has a date: upload order"
    text = pdf_words(deferred["skin-lesion-report.pdf"]())
    assert "2020-01-01 (entered)" in text and f"{names[1]} (2020-01-01, entered by the user)" in text


def test_evolution_sorts_by_date_and_shows_every_figure(app_env: Path, lesion_photos, reference) -> None:
    exif_day = datetime.date(2021, 3, 4)
    (n0, b0), (n1, b1), (n2, b2) = lesion_photos
    dated = ("dated_" + n2, _jpeg(Image.open(io.BytesIO(b2)), _exif_date(exif_day)))
    at = upload(_app("evolution"), [(n0, b0), (n1, b1), dated])

    # One date input per photo: the EXIF date is read, the others are empty until the user enters them.
    assert {d.label: d.value for d in at.date_input} == {n0: None, n1: None, dated[0]: exif_day}
    dates = {n0: datetime.date(2022, 5, 1), n1: datetime.date(2023, 6, 1), dated[0]: exif_day}
    for name in (n0, n1):
        next(d for d in at.date_input if d.label == name).set_value(dates[name])
    at.run()
    assert not at.exception
    order = [dated[0], n0, n1]  # by date: the 2021 photo comes first
    photos = {n0: b0, n1: b1, dated[0]: dated[1]}

    def label(name: str) -> str:
        return f"{dates[name]:%Y-%m-%d}" + ("" if name == dated[0] else " (entered)")

    def check(order: list[str]) -> None:
        figs = charts(at)
        assert set(figs) == {"evo_sequence", "evo_lines", "evo_changes"}
        expected = reference.predict([load_image(photos[n]) for n in order], sequence=True)
        assert_probs(bar_probs(figs["evo_sequence"]), expected.sequence)
        visit_captions = [img.captions[0] for img in at.image if " · " in img.captions[0]]
        assert visit_captions == [f"{label(n)} · {n}" for n in order]
        heat_captions = [img.captions[0] for img in at.image if "where the model looked" in img.captions[0]]
        assert heat_captions == [f"Grad-CAM: where the model looked for {CLASS_NAMES[max(p, key=p.get)]}"
                                 for p in expected.photos]  # the caption the Classify page gives
        # Per-visit lines: one trace per class, one point per visit, in date order.
        lines = figs["evo_lines"]["data"]
        assert sorted(t["name"] for t in lines) == sorted(CLASS_NAMES.values())
        assert figs["evo_lines"]["layout"]["xaxis"]["ticktext"] == [label(n) for n in order]
        code_of = {v: k for k, v in CLASS_NAMES.items()}
        colours = [trace["line"]["color"] for trace in lines]
        assert colours == [views.CLASS_COLOURS[code_of[t["name"]]] for t in lines] and len(set(colours)) == 7
        changes = figs["evo_changes"]["layout"]
        assert changes["title"]["text"] == "Measured changes per visit"
        assert [changes[f"yaxis{i}" if i > 1 else "yaxis"]["title"]["text"] for i in (1, 2, 3)] == [
            "area vs first visit", "colour variation (Lab std)", "asymmetry (0 = symmetric)"]
        share = json.loads(at.dataframe[0].proto.columns)["lesion share of frame"]
        assert share["type_config"]["format"] == "percent"  # "%.1%%" failed to format the number
        for trace in lines:
            assert _array(trace["x"]) == [1, 2, 3]
            assert _array(trace["y"]) == pytest.approx([p[code_of[trace["name"]]] for p in expected.photos],
                                                        abs=1e-5)
        table = at.dataframe[0].value
        assert list(table.photo) == order and len(table) == 3
        assert list(table.date) == [label(n) for n in order]
        assert list(table["date from"]) == ["the photo's file (EXIF)" if n == dated[0] else "entered by you"
                                            for n in order]
        assert table["area vs first visit"].iloc[0] == pytest.approx(1.0)
        assert table["lesion share of frame"].between(0, 1).all()
        assert (table["asymmetry (0 = symmetric)"] >= 0).all()
        assert_verdicts(at, [expected.sequence, *expected.photos], reference)

    check(order)
    # Moving a visit's date re-sorts the visits, the sequence and the table.
    widget = next(d for d in at.date_input if d.label == n1)
    widget.set_value(datetime.date(2020, 1, 1)).run()
    assert not at.exception
    dates[n1] = datetime.date(2020, 1, 1)
    check([n1, dated[0], n0])
    # Changing the file's own date makes it an entered one.
    next(d for d in at.date_input if d.label == dated[0]).set_value(datetime.date(2021, 3, 5)).run()
    assert not at.exception
    assert next(c for img in at.image for c in img.captions if c.endswith(f" · {dated[0]}")).startswith(
        "2021-03-05 (entered)")


# ----------------------------------------------------------------------------- explorer


def test_class_colours_are_red_only_for_malignant_classes() -> None:
    """Red means malignant everywhere in the app: benign keratosis was once drawn in red, and melanoma
    (teal) and nevus (light green) were hard to tell apart."""
    assert set(views.CLASS_COLOURS) == set(CLASSES) and len(set(views.CLASS_COLOURS.values())) == len(CLASSES)
    for code, colour in views.CLASS_COLOURS.items():
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (r > max(g, b)) == (code in MALIGNANT), code


def test_explorer_without_dataset_explains_how_to_get_it(app_env: Path, tmp_path: Path) -> None:
    at = _app("explorer")
    assert at.sidebar.text_input[0].value == ""
    info = " ".join(i.value for i in at.main.info)
    assert "No HAM10000 folder is set" in info
    assert "Dataverse" in info and "HAM10000_DIR" in info
    assert charts(at) == {} and len(at.metric) == 0
    at.sidebar.text_input[0].set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception
    info = " ".join(i.value for i in at.main.info)
    assert "not found" in info and "Dataverse" in info


@pytest.mark.slow
def test_explorer_counts_filters_and_gallery(ham10000: pd.DataFrame) -> None:
    at = _app("explorer")
    assert at.sidebar.text_input[0].value == str(HAM_DIR)
    assert len(ham10000) == 10015
    assert at.metric[0].value == f"{len(ham10000):,}" == "10,015"
    assert at.metric[1].value == f"{ham10000.lesion_id.nunique():,}" and not at.metric[0].proto.delta  # no "↑ 7,470"
    bars = charts(at)["dx_chart"]["data"]
    counts = [_array(t["x"])[0] for t in bars]
    assert counts == sorted(counts) and len(bars) == 7  # sorted: the largest bar on top
    code_of = {v: k for k, v in CLASS_NAMES.items()}
    assert all(t["marker"]["color"] == views.CLASS_COLOURS[code_of[t["name"]]] for t in bars)
    assert {t["name"] for t in charts(at)["age_chart"]["data"]} <= set(CLASS_NAMES.values())  # names, not codes
    figs = charts(at)
    assert {"dx_chart", "age_chart", "site_chart", "sex_chart", "lesion_seq"} <= set(figs)
    gallery = [img.captions[0] for img in at.image if " · " in img.captions[0]]
    assert len(gallery) == 12 and len([b for b in at.button if b.label == "Analyse"]) == 12

    at.multiselect[0].set_value(["mel"]).run()
    assert not at.exception
    mel = ham10000[ham10000.dx == "mel"]
    assert at.metric[0].value == f"{len(mel):,}" and at.metric[1].value == f"{mel.lesion_id.nunique():,}"
    gallery = [img.captions[0] for img in at.image if " · " in img.captions[0]]
    assert len(gallery) == 12 and all(" · mel · " in c for c in gallery)
    dx_bars = charts(at)["dx_chart"]["data"]
    assert [t["name"] for t in dx_bars] == [CLASS_NAMES["mel"]]
    assert dx_bars[0]["marker"]["color"] == views.CLASS_COLOURS["mel"]  # the same colour as before the filter

    at.multiselect[2].set_value(["female"]).run()
    assert at.metric[0].value == f"{len(mel[mel.sex == 'female']):,}"
    at.multiselect[0].set_value(["df", "vasc"]).run()
    both = ham10000[ham10000.dx.isin(["df", "vasc"]) & (ham10000.sex == "female")]
    assert at.metric[0].value == f"{len(both):,}"
    assert not at.exception


@pytest.mark.slow
def test_explorer_analyse_button_opens_classify(ham10000: pd.DataFrame, reference) -> None:
    at = _app("explorer")
    button = next(b for b in at.button if b.label == "Analyse")
    image_id = button.key.removeprefix("analyse_")
    button.click().run()
    assert not at.exception
    assert at.title[0].value.endswith("Classify a skin lesion")
    assert [s.value for s in at.subheader] == [f"{image_id}.jpg"]
    path = next(HAM_DIR.glob(f"**/{image_id}.jpg"))
    # What the dataset knows comes along: the diagnosis, how it was confirmed, and the patient context.
    row = ham10000[ham10000.image_id == image_id].iloc[0]
    known = " ".join(i.value for i in at.main.info)
    assert f"the dataset's diagnosis is **{CLASS_NAMES[row.dx]}**" in known and image_id in known
    assert f"confirmed by {CONFIRMATION[row.dx_type]}" in known
    assert at.number_input[0].value == int(row.age)
    assert [s.value for s in at.selectbox if s.label in ("Sex", "Body site")] == [row.sex, row.localization]
    expected = reference.predict([load_image(path)], age=float(row.age), sex=row.sex, site=row.localization).photos[0]
    assert_probs(bar_probs(charts(at)["chart_0"]), expected)
    assert_verdicts(at, [expected], reference)
    assert len(at.image) == 2
    # The dataset photo can be cleared again. AppTest keeps requesting the page given to its own
    # switch_page() (explorer) even after the script switched pages, whereas a browser stays on the
    # classify page's URL: tell AppTest where the browser is.
    at.switch_page("app_pages/classify.py")
    next(b for b in at.button if b.label == "Clear the dataset photo").click().run()
    assert not at.exception
    assert any("Upload a photo to start" in i.value for i in at.main.info)
    assert not any("the dataset's diagnosis" in i.value for i in at.main.info)
    # The dataset patient's context leaves with the photo: the user's own photo is not read with it.
    assert at.number_input[0].value is None
    assert [s.value for s in at.selectbox if s.label in ("Sex", "Body site")] == ["unknown", "unknown"]


@pytest.mark.slow
def test_explorer_lesion_view_runs_a_sequence(ham10000: pd.DataFrame, reference) -> None:
    at = _app("explorer")
    sizes = ham10000.groupby("lesion_id").size()
    multi = sorted(sizes[sizes >= 2].index)
    box = next(s for s in at.selectbox if s.label.startswith("Lesion ("))
    assert box.label == f"Lesion ({len(multi)} with two or more photos)"
    lesion = sorted(sizes[sizes >= 3].index)[0]
    box.set_value(lesion).run()
    assert not at.exception
    rows = ham10000[ham10000.lesion_id == lesion].sort_values("image_id")
    truth = rows.dx.iloc[0]
    assert any(f"Ground truth: **{CLASS_NAMES[truth]} ({truth})**" in c.value for c in at.main.caption)
    paths = [next(HAM_DIR.glob(f"**/{i}.jpg")) for i in rows.image_id]
    expected = reference.predict([load_image(p) for p in paths], sequence=True)
    fig = charts(at)["lesion_seq"]
    assert fig["layout"]["title"]["text"] == "Sequence prediction"
    assert_probs(bar_probs(fig), expected.sequence)
    assert [img.captions[0] for img in at.image][-len(rows):] == [f"{i}.jpg" for i in rows.image_id]
    assert_verdicts(at, [expected.sequence, *expected.photos], reference)
    assert any(c.value.startswith("With the patient's age, sex and site:") for c in at.main.caption)


@pytest.mark.slow
def test_explorer_charts_count_every_photo_in_neutral_and_class_colours(ham10000: pd.DataFrame,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The explorer's charts (graph objects since plotly express made filters slow) count exactly the photos
    filtered, each class in its colour and the sexes in neutral ones; the lesion shown is scored once."""
    calls = _count_model_calls(monkeypatch)
    at = _app("explorer")
    at.multiselect[0].set_value(["mel", "nv"]).run()
    assert not at.exception
    view = ham10000[ham10000.dx.isin(["mel", "nv"])]
    figs = charts(at)
    age = figs["age_chart"]
    assert age["layout"]["barmode"] == "stack"
    code_of = {v: k for k, v in CLASS_NAMES.items()}
    for trace in age["data"]:  # each class's 5-year bands hold exactly its photos with a known age
        ages = view[view.dx == code_of[trace["name"]]].age.dropna()
        assert sum(_array(trace["y"])) == len(ages)
        assert trace["marker"]["color"] == views.CLASS_COLOURS[code_of[trace["name"]]]
    assert sum(sum(_array(t["y"])) for t in age["data"]) == len(view.age.dropna())
    sites = figs["site_chart"]["data"][0]
    assert dict(zip(sites["y"], _array(sites["x"]))) == view.localization.value_counts().to_dict()
    pie = figs["sex_chart"]["data"][0]
    assert dict(zip(pie["labels"], _array(pie["values"]))) == view.sex.fillna("unknown").value_counts().to_dict()
    malignant = {views.CLASS_COLOURS[c] for c in MALIGNANT} | {views.MALIGNANT_COLOUR}
    assert not set(pie["marker"]["colors"]) & malignant, "red means a malignant class: not a sex"
    assert pie["marker"]["colors"][list(pie["labels"]).index("unknown")] == "#bdbdbd"
    scored = len(calls)
    at.number_input[0].set_value(2).run()  # another gallery page: the lesion below is the same
    assert not at.exception and len(calls) == scored, "the lesion shown is scored once, not on every rerun"


# ----------------------------------------------------------------------------- model card


def test_model_card_without_metrics_still_renders(app_env: Path) -> None:
    at = _app("model_card")
    assert at.title[0].value.endswith("Model card & about")
    assert any(DISCLAIMER in e.value for e in at.main.error)
    text = " ".join(m.value for m in at.markdown)
    assert "CNN-LSTM" in text and all(name in text for name in CLASS_NAMES.values())
    assert "Tschandl" in text
    assert len(at.dataframe) == 0 and "confusion" not in charts(at)
    assert len(at.json) == 1


def _synthetic_metrics() -> dict:
    """Model-card metrics in the layout skin_model.evaluation.evaluate writes, from random predictions."""
    rng = np.random.default_rng(0)
    labels = np.arange(70) % len(CLASSES)

    def report() -> dict:
        return classification_report(rng.dirichlet(np.ones(len(CLASSES)), size=len(labels)), labels)

    views = ("full", "centre_crop", "zoom_0.6")
    guesses = rng.integers(0, len(CLASSES), len(labels))
    intervals = {"single_photo_full": bootstrap_intervals(labels, {"full": guesses}, resamples=50),
                 "multi_photo_lesions": bootstrap_intervals(labels, {"mean_of_photos": guesses, "sequence": labels},
                                                            resamples=50)}
    return {"split": "test", "n_photos": 70, "n_lesions": 70, "intervals": intervals,
            "single_photo": {v: report() for v in views}, "with_patient_context": {v: report() for v in views},
            "multi_photo_lesions": {"n_lesions": 70, "n_photos": 70, "single_photo": report(),
                                    "mean_of_photos": report(), "sequence": None}}


def _check_metrics(at: AppTest, metrics: dict) -> None:
    assert any(DISCLAIMER in e.value for e in at.main.error)
    table = at.dataframe[0].value
    full = metrics["single_photo"]["full"]
    row = table[table.evaluation == "single photo, full frame"].iloc[0]
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
        assert row[key] == pytest.approx(full[key], nan_ok=True)
    multi = metrics.get("multi_photo_lesions") or {}
    expected_rows = (len(metrics["single_photo"])
                     + sum(bool(r) for r in (metrics.get("with_patient_context") or {}).values())
                     + bool(metrics.get("per_lesion_sequence"))
                     + sum(bool(multi.get(k)) for k in ("single_photo", "mean_of_photos", "sequence")))
    assert len(table) == expected_rows
    fig = charts(at)["confusion"]
    heat = fig["data"][0]
    assert heat["type"] == "heatmap"
    z = heat["z"]
    z = [_array(r) for r in z] if isinstance(z, list) else np.reshape(_array(z), (len(CLASSES), -1)).tolist()
    assert z == full["confusion_matrix"]
    per_class = at.dataframe[1].value
    assert list(per_class["class"]) == [CLASS_NAMES[c] for c in CLASSES]  # names, not codes
    columns = json.loads(at.dataframe[1].proto.columns)
    assert columns["recall"]["type_config"]["format"] == "%.3f"  # one precision, not 0.6 beside 0.6471
    columns = json.loads(at.dataframe[0].proto.columns)
    assert columns["balanced_accuracy"]["label"] == "balanced accuracy" and columns["ece"]["help"]
    assert any("**ECE**: expected calibration error" in c.value for c in at.caption)  # each column explained
    if metrics.get("reliability"):
        layout = charts(at)["reliability"]["layout"]
        assert layout["xaxis"]["range"][1] > 1 and layout["yaxis"]["range"][1] > 1  # a bin near 1 is drawn whole
        assert all(t["cliponaxis"] is False for t in charts(at)["reliability"]["data"])
    assert "+0.000 to +0.000" not in " ".join(c.value for c in at.caption)
    if "intervals" in metrics:
        lo, hi = metrics["intervals"]["single_photo_full"]["full"]["balanced_accuracy"]
        caption = next(c.value for c in at.caption if c.value.startswith("95% intervals"))
        assert f"balanced accuracy {lo:.3f} to {hi:.3f}" in caption
    assert list(per_class["support"]) == [full["per_class"][c]["support"] for c in CLASSES]
    by = (metrics.get("triage") or {}).get("benign_specificity_by_confirmation")
    if by:  # the specificity among benign photos confirmed by histopathology is shown on its own
        text = " ".join(m.value for m in at.markdown)
        for kind, op in by.items():
            assert f"{CONFIRMATION.get(kind, kind)} **{op['specificity']:.1%}**" in text


def test_model_card_with_metrics(app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, stub = checkpoint.load(app_env)
    card = checkpoint.save(model, tmp_path, dataclasses.replace(
        stub, name="stub with metrics", architecture="Stub CNN-LSTM for tests", metrics=_synthetic_metrics()))
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(tmp_path))
    at = _app("model_card")
    assert "Stub CNN-LSTM for tests" in at.markdown[0].value
    assert "the sequence prediction is\nthe mean of the photos' probabilities" in at.markdown[0].value
    _check_metrics(at, card.metrics)
    evaluations = list(at.dataframe[0].value.evaluation)
    assert "lesions with 2+ photos: sequence head" not in evaluations  # None in the card: no row
    assert "lesions with 2+ photos: mean of photos" in evaluations
    assert "single photo + patient context, full frame" in evaluations
    details = at.json[0].value
    details = json.loads(details) if isinstance(details, str) else details
    assert details["data"]["dataset"] == "HAM10000" and "training options" in details
    assert at.json[0].proto.max_expand_depth == 2  # opens on its contents, not on a collapsed {...}
    assert any(f"sha256 {card.sha256}" in m.value for m in at.markdown)


@pytest.mark.slow
def test_model_card_of_the_shipped_weights(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHIPPED_CARD.is_file():
        pytest.skip(f"no shipped weights yet ({SHIPPED_CARD} is missing)")
    card = checkpoint.read_card(SHIPPED_CARD.parent)
    if not card.metrics.get("single_photo"):
        pytest.skip("the shipped model card has no metrics")
    monkeypatch.delenv("SKIN_MODEL_WEIGHTS")
    _clear_caches()
    at = _app("model_card")
    _check_metrics(at, card.metrics)


# ----------------------------------------------------------------------------- the design, measured


def test_a_photo_crosses_at_most_twelve_project_files(app_env: Path, lesion_photos, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """From upload to screen (decode, analyse with heatmaps, decide, draw), once the model is loaded: the
    project files whose code runs, traced call by call. The path used to cross 16 files and double back;
    the redesign brought it to 10, and the triage decision (its rule and the decision) adds two steps. The
    texture check runs inside the same forward and adds none (the network looks its block up once, the data
    config holds the input size as a field). Serving on ONNX Runtime replaced the torch engine, the network,
    the calibration and pytorch-grad-cam on this path with the runtime, its torch-free input and the heatmap
    formulas (runtime.py, data/preprocess.py, explain/methods.py, explain/heatmap.py)."""
    import sys
    import threading

    model, card = checkpoint.load(app_env)
    rule = TriageRule(threshold=0.3, malignant=tuple(sorted(MALIGNANT)), sensitivity=0.9, specificity=0.7)
    checkpoint.save(model, tmp_path / "w", dataclasses.replace(card, trust=TrustSettings(triage=rule)))
    monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(tmp_path / "w"))
    at = _app()  # loads the model: not part of a photo's path
    at.session_state[PREDICTOR_KEY].prepare_heatmaps()  # which goes on in a thread: waited for (engine's lock)
    at.number_input[0].set_value(61)  # with patient context, the longer path
    seen: set[str] = set()
    root = str(APP.parent)

    def trace(frame, event, _arg) -> None:
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(root) and "/tests/" not in name and "/.venv/" not in name:
            seen.add(str(Path(name).relative_to(root)))

    threading.setprofile(trace)
    sys.setprofile(trace)
    try:
        upload(at, lesion_photos[:1])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert {"skin_model/runtime.py", "skin_model/explain/methods.py", "skin_model/trust/triage.py",
            "skin_model/trust/decision.py"} <= seen, seen  # the whole path was traced
    assert not {"skin_model/explain/cam.py", "skin_model/engine.py"} & seen, "heatmaps need no torch"
    assert at.number_input[0].value == 61
    assert len(seen) <= 12, "\n".join(sorted(seen))


# ----------------------------------------------------------------------------- examples and guidance (#16)


def test_example_photos_analyse_with_one_click_without_a_dataset(app_env: Path, reference) -> None:
    """No HAM10000 folder is set (as on Streamlit Cloud): the Classify page offers one shipped photo per
    diagnosis; a click analyses it with what the dataset knows (diagnosis, confirmation, patient context)."""
    rows = views.examples()
    assert sorted(r["dx"] for r in rows) == sorted(CLASSES) and len(rows) <= 14
    assert all((views.EXAMPLES_DIR / r["file"]).stat().st_size < 20_000 for r in rows)
    licence = (views.EXAMPLES_DIR / "README.md").read_text()
    assert "CC BY-NC 4.0" in licence and "Tschandl" in licence and "10.7910/DVN/DBW86T" in licence
    at = _app()
    # one list of formats: the prompt names what the uploader accepts
    assert [f".{t}" if not t.startswith(".") else t for t in at.file_uploader[0].proto.type] == list(ACCEPTED_SUFFIXES)
    assert any(f"{FORMAT_NAMES} photos are accepted" in i.value for i in at.main.info)
    buttons = [b for b in at.button if (b.key or "").startswith("classify_example_")]
    assert [b.label for b in buttons] == [views.short_label(r["dx"]) for r in rows]
    row = next(r for r in rows if r["dx"] == "mel")
    next(b for b in buttons if b.key == f"classify_example_{row['image_id']}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.subheader] == [row["file"]]
    known = " ".join(i.value for i in at.main.info)
    assert f"HAM10000 photo {row['image_id']}" in known and "the dataset's diagnosis is **Melanoma**" in known
    assert "confirmed by histopathology" in known
    assert at.number_input[0].value == int(row["age"])
    assert [s.value for s in at.selectbox if s.label in ("Sex", "Body site")] == [row["sex"], row["localization"]]
    expected = reference.predict([load_image(views.EXAMPLES_DIR / row["file"])], age=float(row["age"]),
                                 sex=row["sex"], site=row["localization"]).photos[0]
    assert_probs(bar_probs(charts(at)["chart_0"]), expected)
    assert not [b for b in at.button if (b.key or "").startswith("classify_example_")], "the row makes way"


def test_the_diagnoses_are_explained_beside_the_probabilities_and_on_the_model_card(app_env: Path,
                                                                                    lesion_photos) -> None:
    at = upload(_app(), lesion_photos[:1])
    guide = next(e for e in at.expander if e.label == "What do these diagnoses mean?")
    text = " ".join(m.value for m in guide.markdown)
    for code in CLASSES:
        assert f"**{CLASS_NAMES[code]}** ({code}; {'malignant' if code in MALIGNANT else 'benign'};" in text
    assert "6,705 of HAM10000's 10,015 photos, 66.9%" in text  # nevi: how common each class is
    scale = next(m.value for m in at.markdown if "linear-gradient" in m.value)
    assert scale.count("rgb(") == 9 and "rgb(0, 0, 128)" in scale and "rgb(128, 0, 0)" in scale  # JET's ends
    card = _app("model_card")
    assert any(s.value == "The seven diagnoses" for s in card.subheader)
    assert any("**Melanoma** (mel; malignant;" in m.value for m in card.markdown)


def test_the_model_card_page_never_describes_a_pooling_the_weights_do_not_use(monkeypatch: pytest.MonkeyPatch,
                                                                             stub_weights: Path,
                                                                             tmp_path: Path) -> None:
    """The architecture names an LSTM; when validation gave its correction a weight of 0 the page says it
    changes nothing shown, and the pooling sentence does not mention it (#16 item 5)."""
    model, card = checkpoint.load(stub_weights)
    with torch.no_grad():
        model.sequence_mix.fill_(0.0)
    checkpoint.save(model, tmp_path / "w", card)
    for weights, uses in ((stub_weights, True), (tmp_path / "w", False)):
        monkeypatch.setenv("SKIN_MODEL_WEIGHTS", str(weights))
        _clear_caches()
        text = " ".join(m.value for m in _app("model_card").markdown)
        assert ("corrected by an LSTM" in text) == uses
        assert ("validation gave its correction a weight of 0" in text) == (not uses)
    _clear_caches()


def test_a_verdict_is_sent_after_the_photo_heatmap_and_chart_it_reads(app_env: Path, lesion_photos,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit draws elements as the script sends them: each verdict is sent last (into a slot above its
    chart), so no verdict is on screen before its photo, heatmap and chart, and the sequence's verdict before
    every photo it reads (#16 item 2)."""
    sent: list[str] = []
    for name in ("chart", "verdict"):
        original = getattr(views, name)

        def record(*args, _name=name, _original=original, **kwargs):
            sent.append(f"{_name}:{kwargs.get('key', '')}")
            return _original(*args, **kwargs)

        monkeypatch.setattr(views, name, record)
    image = st.delta_generator.DeltaGenerator.image

    def record_image(self, *args, **kwargs):
        sent.append(f"image:{kwargs.get('caption', '')[:5]}")
        return image(self, *args, **kwargs)

    monkeypatch.setattr(st.delta_generator.DeltaGenerator, "image", record_image)
    at = upload(_app(), lesion_photos[:2])
    assert len(verdicts(at)) == 3  # the sequence's and each photo's
    analysed = sent[sent.index("chart:sequence_chart"):]
    assert analysed[-1] == "verdict:" and analysed.count("verdict:") == 3, analysed  # the sequence's comes last
    photos = [i for i, item in enumerate(analysed) if item == "image:photo"]
    assert len(photos) == 2
    for i, start in enumerate(photos):
        photo, heatmap, chart, verdict = analysed[start:start + 4]
        assert heatmap.startswith("image:") and heatmap != "image:photo", analysed  # the heatmap, by its caption
        assert (chart, verdict) == (f"chart:chart_{i}", "verdict:"), analysed
