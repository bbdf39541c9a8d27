"""The serving engine: the weights' exported forward (model/serving.py) on ONNX Runtime, torch-free.

ONNX Runtime runs Lite0 about four times faster than torch eager on this CPU (4.4 against 21 ms a
photo) and needs no torch import (about 500 MB of resident memory with the default build), so
the app and the CLI score photos with it; torch loads only for Grad-CAM, training and evaluation.
`engine.TorchEngine` runs the same graphs in torch (on a GPU, or for weights exported before
ONNX existed here) and returns the same `Scores`.

    scores = engine.score(pixels, meta)            # one forward for a batch of photos
    raw, shown = engine.sequence(features, logits)  # one lesion's photos, in time order
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from skin_model.constants import META_DIM
from skin_model.data.config import DataConfig
from skin_model.data.preprocess import pixels
from skin_model.model.card import ModelCard
from skin_model.model.files import WeightsError, verified
from skin_model.model.scores import Engine, Scores

if TYPE_CHECKING:
    import onnxruntime as ort


def score_photos(engine: Engine, photos: Sequence[Image.Image], config: DataConfig, meta: np.ndarray | None = None,
                 batch_size: int = 64) -> Scores:
    """`engine.score` over photos in batches (context rows `meta`, (N, META_DIM), zeros when None)."""
    if len(photos) == 0:
        raise ValueError("no photos given")
    meta = np.zeros((len(photos), META_DIM), dtype=np.float32) if meta is None else np.asarray(meta, np.float32)
    return Scores.concat([engine.score(pixels(photos[i:i + batch_size], config), meta[i:i + batch_size])
                          for i in range(0, len(photos), batch_size)])


def threads() -> int:
    """Threads for one inference: `SKIN_MODEL_THREADS`, else the cores this process may use."""
    wanted = os.environ.get("SKIN_MODEL_THREADS")
    return max(1, int(wanted)) if wanted else len(os.sched_getaffinity(0))


class OnnxEngine:
    """The card's exported graphs on ONNX Runtime's CPU provider, verified by checksum before use.
    `run` is thread-safe in ONNX Runtime, so one engine serves every session of the app."""

    name = "ONNX Runtime"

    def __init__(self, directory: str | Path, card: ModelCard, n_threads: int | None = None) -> None:
        import onnxruntime as ort

        graphs = card.onnx
        if graphs is None:
            raise WeightsError("these weights have no ONNX export; run `skin-model export` (or use the torch engine)")
        if graphs.weights_sha256 != card.sha256:
            raise WeightsError("the ONNX export is of other weights than the card's; run `skin-model export` again")
        directory = Path(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads or threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        def session(file: str, digest: str | None) -> ort.InferenceSession:
            return ort.InferenceSession(str(verified(directory / file, digest, "ONNX graph")), options,
                                        providers=["CPUExecutionProvider"])

        self._session = session
        self._photo = session(graphs.photo_file, graphs.photo_sha256)
        self._sequence = session(graphs.sequence_file, graphs.sequence_sha256)
        self._heatmap_file = (graphs.heatmap_file, graphs.heatmap_sha256) if graphs.heatmap_file else None
        self._heatmap: ort.InferenceSession | None = None
        self._lock = threading.Lock()  # the heatmap graph is verified and loaded on first use (folders never use it)

    @property
    def serves_heatmaps(self) -> bool:
        """True when the weights carry a heatmap graph (Grad-CAM's inputs from the served forward)."""
        return self._heatmap_file is not None

    def load_heatmaps(self) -> None:
        """Load the heatmap graph now rather than on the first heatmap (the app, which draws one for every photo)."""
        if self._heatmap_file is not None:
            self._heatmap_graph()

    def _heatmap_graph(self) -> ort.InferenceSession:
        if self._heatmap_file is None:
            raise ValueError("these weights have no heatmap graph; the torch explainer draws their heatmaps")
        with self._lock:
            if self._heatmap is None:
                self._heatmap = self._session(*self._heatmap_file)
            return self._heatmap

    def score(self, pixels: np.ndarray, meta: np.ndarray, heatmaps: bool = False) -> Scores:
        """One forward of the photo graph, or of the heatmap graph (the same outputs plus Grad-CAM's)."""
        graph = self._heatmap_graph() if heatmaps else self._photo
        out = graph.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32),
                               "meta": np.ascontiguousarray(meta, dtype=np.float32)})
        return Scores(*out)

    def sequence(self, features: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw, shown = self._sequence.run(None, {"features": np.ascontiguousarray(features, dtype=np.float32),
                                               "logits": np.ascontiguousarray(logits, dtype=np.float32)})
        return raw, shown
