"""Fixtures shared by every layer of the suite; the helpers they use live in helpers.py."""


from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import DEFAULT_HAM_DIR, build_tiny_model, make_lesion_photo, write_fake_ham
from PIL import Image

from skin_model.model import checkpoint
from skin_model.model.card import ModelCard
from skin_model.model.network import SkinLesionNet


@pytest.fixture(scope="session")
def lesion_photo() -> Callable[..., Image.Image]:
    """Factory: `lesion_photo(centre=(0.3, 0.6), radii=(0.1, 0.1), size=(200, 150))`."""
    return make_lesion_photo


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
    checkpoint.save(_tiny_model, directory, ModelCard(name="test"))
    return directory


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000 folder (the reduced shared copy or $HAM10000_DIR); skips when absent."""
    env = os.environ.get("HAM10000_DIR")
    path = Path(env).expanduser() if env else DEFAULT_HAM_DIR
    if not (path / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"HAM10000 not found at {path}; set HAM10000_DIR")
    return path


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
