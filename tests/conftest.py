"""Shared fixtures: tiny test weights, synthetic lesion photos and fake HAM10000 folders."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from skin_model import checkpoint
from skin_model.constants import CLASSES
from skin_model.model import SkinLesionNet
from skin_model.presets import to_batch

REPO = Path(__file__).resolve().parents[1]

# The suite runs many tiny forward passes; one intra-op thread avoids the thread
# oversubscription that makes them several times slower on a small, busy machine
# (or under pytest-xdist). SKIN_MODEL_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("SKIN_MODEL_TEST_THREADS", "1")))
DEFAULT_HAM_DIR = REPO.parent / "shared" / "ham10000"

SKIN = (226, 178, 152)
BROWN = (96, 58, 36)


def make_lesion_photo(size: tuple[int, int] = (200, 150), centre: tuple[float, float] = (0.5, 0.5),
                      radii: tuple[float, float] = (0.25, 0.2), skin: tuple[int, int, int] = SKIN,
                      lesion: tuple[int, int, int] = BROWN, seed: int = 0) -> Image.Image:
    """A dermoscopy-like RGB photo: noisy skin-coloured background with a dark brown ellipse.

    `centre` and `radii` are fractions of the width and height.
    """
    w, h = size
    img = Image.new("RGB", size, skin)
    cx, cy = centre[0] * w, centre[1] * h
    rx, ry = radii[0] * w, radii[1] * h
    ImageDraw.Draw(img).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=lesion)
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


@pytest.fixture
def lesion_photo() -> Callable[..., Image.Image]:
    """Factory: `lesion_photo(centre=(0.3, 0.6), radii=(0.1, 0.1), size=(200, 150))`."""
    return make_lesion_photo


def build_tiny_model(seed: int = 0) -> SkinLesionNet:
    """An untrained SkinLesionNet (pretrained=False) whose outputs depend on the photo.

    PyTorch's default initialisation lets the signal of the 50-layer EfficientNet fade
    to nothing (every photo then gets the same output, so equality tests would pass
    vacuously), so the BatchNorm running statistics are estimated on a batch of
    synthetic photos, as a trained network would have them. Weights are untouched.
    """
    torch.manual_seed(seed)
    model = SkinLesionNet(pretrained=False)
    photos = [make_lesion_photo(centre=(0.2 + 0.08 * i, 0.3 + 0.05 * i), radii=(0.1 + 0.02 * i, 0.12),
                                lesion=(60 + 15 * i, 40 + 5 * i, 30), seed=i) for i in range(8)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.momentum = None  # cumulative average: one pass sets the statistics
        module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model.features(to_batch(photos))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    return model.eval()


@pytest.fixture(scope="session")
def _tiny_model() -> SkinLesionNet:
    return build_tiny_model()


@pytest.fixture
def tiny_model(_tiny_model: SkinLesionNet) -> SkinLesionNet:
    """A private copy of the tiny model (eval mode), free to modify."""
    return copy.deepcopy(_tiny_model)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, _tiny_model: SkinLesionNet) -> Path:
    """The tiny model (seed 0, pretrained=False) saved with `checkpoint.save`; never the shipped weights."""
    directory = tmp_path_factory.mktemp("tiny_weights")
    checkpoint.save(_tiny_model, directory, card={"name": "test"})
    return directory


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000 folder (the reduced shared copy or $HAM10000_DIR); skips when absent."""
    env = os.environ.get("HAM10000_DIR")
    path = Path(env).expanduser() if env else DEFAULT_HAM_DIR
    if not (path / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"HAM10000 not found at {path}; set HAM10000_DIR")
    return path


def write_fake_ham(root: Path, layout: str = "flat", lesions_per_class: int = 3,
                   images_per_lesion: tuple[int, ...] = (1, 2, 3), size: tuple[int, int] = (64, 48)) -> Path:
    """A tiny HAM10000 folder: metadata csv + synthetic JPEGs in the flat or official layout.

    Lesion k of a class gets images_per_lesion[k % len(images_per_lesion)] photos.
    """
    if layout not in ("flat", "official"):
        raise ValueError(layout)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sites = ["back", "face", "trunk", "lower extremity", "unknown"]
    rows = []
    image_no = 24306
    lesion_no = 1
    for dx in CLASSES:
        for k in range(lesions_per_class):
            lesion_id = f"HAM_{lesion_no:07d}"
            lesion_no += 1
            age = float(rng.integers(20, 85)) if k % 4 else np.nan
            sex = ["male", "female", "unknown"][k % 3]
            for _ in range(images_per_lesion[k % len(images_per_lesion)]):
                rows.append({"lesion_id": lesion_id, "image_id": f"ISIC_{image_no:07d}", "dx": dx,
                             "dx_type": "histo", "age": age, "sex": sex, "localization": sites[k % len(sites)]})
                image_no += 1
    table = pd.DataFrame(rows)
    table.to_csv(root / "HAM10000_metadata.csv", index=False)
    for i, row in enumerate(table.itertuples()):
        if layout == "flat":
            folder = root / "images"
        else:
            folder = root / ("HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2")
        folder.mkdir(exist_ok=True)
        c = CLASSES.index(row.dx)
        photo = make_lesion_photo(size=size, centre=(0.3 + 0.06 * c, 0.5), radii=(0.15 + 0.02 * c, 0.2),
                                  lesion=(40 + 25 * c, 30 + 10 * c, 20 + 20 * (c % 3)), seed=i)
        photo.save(folder / f"{row.image_id}.jpg", quality=90)
    return root


@pytest.fixture
def fake_ham(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `fake_ham(layout="flat"|"official", lesions_per_class=3, ...)` -> folder path.

    By default 3 lesions per class with 1, 2 and 3 photos: 21 lesions, 42 photos.
    """
    counter = iter(range(1000))

    def make(layout: str = "flat", **kwargs) -> Path:
        return write_fake_ham(tmp_path / f"ham_{layout}_{next(counter)}", layout, **kwargs)

    return make


@pytest.fixture(scope="session")
def fake_ham_at() -> Callable[..., Path]:
    """`fake_ham_at(root, layout, ...)`: the fake_ham writer for fixtures wider than one test."""
    return write_fake_ham


# ----------------------------------------------------------------------------- a real server and browsers
# Shared by the browser tests that start their own `streamlit run` (privacy, concurrent sessions).

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_STARTUP_TIMEOUT = 180  # importing torch and loading the model on a busy CPU


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_health(url: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            return response.read().decode().strip()
    except OSError:
        return ""


class StreamlitServer:
    """`streamlit run streamlit_app.py` on a free port of 127.0.0.1, in the repository root.

    `env` replaces the environment of the server entirely (pass `{**os.environ, ...}` to extend it).
    """

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        import subprocess
        import sys
        import time

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**env, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(self.port),
                 "--server.address", "127.0.0.1", "--server.headless", "true",
                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT
        while server_health(self.url) != "ok":
            if self.process.poll() is not None:
                pytest.fail(f"streamlit exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"streamlit did not answer on {self.url} within {SERVER_STARTUP_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def chromium_driver(profile: Path, window: str = "1400,2000"):
    """A headless Chromium (Selenium) with its own user-data-dir; skips when Chromium is absent."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile.mkdir(parents=True, exist_ok=True)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", f"--window-size={window}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
