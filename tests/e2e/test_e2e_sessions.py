"""Five users at once: five headless Chromium sessions (separate profiles) against one
`streamlit run` server, each uploading a different real HAM10000 photo at the same moment.

Every session must get its own result and only its own: its page names only its
file, shows the photo it uploaded (the displayed image is compared with the
photos of all five), and its chart holds the probabilities the package computes
for that photo. The tiny stub model keeps it light; skips without HAM10000.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_model import CLASSES, load_image, load_predictor

from .conftest import REPO, StreamlitServer, chromium_driver, require_chromium

pytestmark = pytest.mark.slow

SESSIONS = 5
RESULT_TIMEOUT = 300  # five browsers and a model on a small, busy CPU


def _ham_photos(ham_dir: Path) -> list[Path]:
    """The first photo (by image id) of five different diagnoses."""
    table = pd.read_csv(ham_dir / "HAM10000_metadata.csv")
    out = []
    for dx in ("mel", "nv", "bcc", "bkl", "vasc")[:SESSIONS]:
        image_id = sorted(table[table.dx == dx].image_id)[0]
        found = sorted(ham_dir.glob(f"**/{image_id}.jpg"))
        if not found:
            pytest.skip(f"{image_id}.jpg not found under {ham_dir}")
        out.append(found[0])
    return out


def _session(url: str, profile: Path, photo: Path, barrier: threading.Barrier) -> dict:
    """One user: open the app, upload (together with the others), wait for the result, read the page."""
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(profile, window="1400,1800")
    try:
        def wait(condition, what: str):
            return WebDriverWait(driver, RESULT_TIMEOUT, poll_frequency=0.5).until(condition, message=what)

        def text(d) -> str:
            return d.find_element(By.TAG_NAME, "body").text

        def idle(d) -> bool:
            return not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"], [data-stale="true"]')

        def charts(d) -> list[dict]:
            return d.execute_script(
                "return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.data)"
                ".map(p => ({x: Array.from(p.data[0].x), codes: Array.from(p.data[0].customdata)}));")

        driver.get(url)
        wait(lambda d: "Upload a photo to start" in text(d) and "Model runs on" in text(d) and idle(d)
             and d.find_elements(By.CSS_SELECTOR, "input[type=file]"), "the classify page, ready")
        barrier.wait(timeout=RESULT_TIMEOUT)
        started = time.perf_counter()
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"), "the file input")[0].send_keys(str(photo))
        wait(lambda d: photo.name in text(d) and len(charts(d)) == 1 and idle(d), f"the result for {photo.name}")
        elapsed = time.perf_counter() - started
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-testid=\"stImageContainer\"]'))"
            ".map(e => ({caption: e.innerText, src: (e.querySelector('img') || {}).src}));")
        photo_src = [s["src"] for s in shown if s["caption"].strip() == "photo" and s["src"]]
        assert len(photo_src) == 1, shown
        image = Image.open(io.BytesIO(requests.get(photo_src[0], timeout=30).content)).convert("RGB")
        headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h3')]
        return {"text": text(driver), "chart": charts(driver)[0], "image": image, "headers": headers,
                "heatmaps": sum("where the model looked for" in s["caption"] for s in shown), "seconds": elapsed}
    finally:
        driver.quit()


def test_five_sessions_at_once_each_see_only_their_own_photo(ham_dir: Path, server_weights: Path,
                                                             tmp_path: Path) -> None:
    require_chromium()
    photos = _ham_photos(ham_dir)
    reference = load_predictor(server_weights, device="cpu")
    expected = [reference.predict([load_image(p)]).photos[0] for p in photos]
    assert len({round(e["mel"], 6) for e in expected}) == SESSIONS, "the photos must get different answers"

    env = {**os.environ, "SKIN_MODEL_WEIGHTS": str(server_weights), "SKIN_MODEL_DEVICE": "cpu"}
    env.pop("HAM10000_DIR", None)
    server = StreamlitServer(env, tmp_path / "streamlit.log", cwd=REPO)
    results: list[dict | None] = [None] * SESSIONS
    errors: list[str] = []
    barrier = threading.Barrier(SESSIONS)

    def user(i: int) -> None:
        try:
            results[i] = _session(server.url, tmp_path / f"profile-{i}", photos[i], barrier)
        except BaseException as exc:  # report in the main thread
            barrier.abort()
            errors.append(f"session {i} ({photos[i].name}): {type(exc).__name__}: {exc}")

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3 * RESULT_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a session hung"
        assert not errors, "\n".join(errors) + f"\nserver log:\n{server.log()}"
        assert server.running
    finally:
        server.stop()

    originals = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in photos]
    for i, (photo, result) in enumerate(zip(photos, results)):
        others = [p.name for j, p in enumerate(photos) if j != i]
        assert photo.name in result["text"]
        assert not [n for n in others if n in result["text"]], f"session {i} shows another user's file name"
        assert result["headers"] == [photo.name], result["headers"]
        assert result["heatmaps"] == 1
        # the picture on the page is this session's photo, not anyone else's
        shown = np.asarray(result["image"].resize(photo_size(photos[i])), dtype=np.float32)
        distances = [float(np.abs(shown - o).mean()) for o in originals]
        assert int(np.argmin(distances)) == i and distances[i] < 8, distances
        # the chart holds the package's probabilities for this photo
        chart = dict(zip(result["chart"]["codes"], result["chart"]["x"]))
        assert sorted(chart) == sorted(CLASSES)
        assert chart == pytest.approx(expected[i], abs=1e-6)
        for j, other in enumerate(expected):
            if j != i:
                assert chart != pytest.approx(other, abs=1e-4)
    print("\nseconds from upload to result, per session:", [round(r["seconds"], 1) for r in results])


def photo_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size
