"""One Predictor and one Grad-CAM Explainer shared by many threads (as the app shares them
between sessions): the same answers as a serial run, no leaked hooks, no memory growth.

The photos are given as file bytes in several formats, so decoding (load_image)
runs concurrently too. Figures are printed; see them with `pytest -s`.
"""

from __future__ import annotations

import gc
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_lesion_photo
from PIL import Image

from skin_model.predict import load_predictor

THREADS = 8
PER_THREAD = 25
TARGETS = (None, "mel", "nv", None, "bcc")  # the predicted class, or a chosen one


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photos() -> list:
    """Twelve different lesions in eight formats (and two as PIL images)."""
    import pillow_heif

    out = []
    for i in range(12):
        img = make_lesion_photo(size=(96 + 8 * i, 72 + 4 * i), centre=(0.3 + 0.04 * i, 0.35 + 0.03 * i),
                                radii=(0.12 + 0.015 * i, 0.2), lesion=(50 + 12 * i, 35 + 4 * i, 25 + 6 * (i % 4)),
                                seed=100 + i)
        kind = i % 6
        if kind == 0:
            out.append(_encode(img, "JPEG", quality=90))
        elif kind == 1:
            out.append(_encode(img, "PNG"))
        elif kind == 2:
            out.append(_encode(img, "WEBP", quality=90))
        elif kind == 3:
            buf = io.BytesIO()
            pillow_heif.from_pillow(img).save(buf, quality=90)
            out.append(buf.getvalue())
        elif kind == 4:
            out.append(_encode(img.convert("RGBA"), "TIFF"))
        else:
            out.append(img)
    return out


def _task(i: int) -> tuple[int, str | None]:
    return i % 12, TARGETS[i % len(TARGETS)]


def _run(predictor, explainer, source, target) -> tuple[np.ndarray, np.ndarray, str]:
    probs = predictor.predict([source]).photos[0]
    heat = explainer.heatmap(source, target)
    return np.array(list(probs.values())), heat.cam.copy(), heat.target


def _hooks(module: torch.nn.Module) -> list[str]:
    """Names of modules that still carry forward (or backward) hooks."""
    found = []
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            found.append(name or "<root>")
    return found


def _global_hooks() -> int:
    from torch.nn.modules import module as mod

    return sum(len(getattr(mod, n, {})) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks"))


@pytest.fixture(scope="module")
def shared(tiny_weights: Path):
    predictor = load_predictor(tiny_weights, device="cpu")
    return predictor, predictor.explainer


def test_threads_give_the_serial_results(shared) -> None:
    predictor, explainer = shared
    photos = _photos()
    serial = {}
    for i in range(12 * len(TARGETS)):
        k, target = _task(i)
        serial[(k, target)] = _run(predictor, explainer, photos[k], target)
    assert len({tuple(np.round(p, 6)) for p, _, _ in serial.values()}) >= 10, "the photos must get different answers"

    results: dict[int, list] = {t: [] for t in range(THREADS)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for j in range(PER_THREAD):
                k, target = _task(t * 7 + j)
                results[t].append(((k, target), _run(predictor, explainer, photos[k], target)))
        except BaseException as exc:  # report it in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), name=f"session-{t}") for t in range(THREADS)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    elapsed = time.perf_counter() - start
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    done = sum(len(r) for r in results.values())
    assert done == THREADS * PER_THREAD
    worst_p = worst_cam = 0.0
    for items in results.values():
        for key, (probs, cam, code) in items:
            ref_probs, ref_cam, ref_code = serial[key]
            assert code == ref_code, key
            assert np.allclose(probs, ref_probs, rtol=0, atol=1e-6), key
            assert np.allclose(cam, ref_cam, rtol=0, atol=1e-5), key
            worst_p = max(worst_p, float(np.abs(probs - ref_probs).max()))
            worst_cam = max(worst_cam, float(np.abs(cam - ref_cam).max()))
    print(f"\n{THREADS} threads x {PER_THREAD} predictions + Grad-CAM: {done} in {elapsed:.1f} s; "
          f"largest difference from the serial run: probabilities {worst_p:.2e}, heatmaps {worst_cam:.2e}")
    assert _hooks(predictor.model) == [] and _hooks(explainer._model) == [] and _global_hooks() == 0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_memory_stays_flat_over_500_predictions_with_heatmaps(shared) -> None:
    predictor, explainer = shared
    photos = _photos()
    for i in range(40):  # warm-up: allocator pools, caches, lazily built transforms
        k, target = _task(i)
        _run(predictor, explainer, photos[k], target)
    gc.collect()
    before = _rss_mb()
    start = time.perf_counter()
    for i in range(500):
        k, target = _task(i)
        _run(predictor, explainer, photos[k], target)
    gc.collect()
    after = _rss_mb()
    growth = after - before
    print(f"\n500 predictions + Grad-CAM in {time.perf_counter() - start:.1f} s: "
          f"VmRSS {before:.1f} -> {after:.1f} MB (growth {growth:+.1f} MB)")
    assert growth < 50, f"resident memory grew by {growth:.1f} MB"
    assert _hooks(predictor.model) == [] and _hooks(explainer._model) == [], "Grad-CAM hooks left behind"
    assert _global_hooks() == 0
