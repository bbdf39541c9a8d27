"""scripts/release_teacher.py: the distillation teacher rebuilt from the repository's history holds
exactly the released models' weights, each at its own input, and is accepted as a teacher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load

from skin_model.constants import WEIGHTS_FILE
from skin_model.model import checkpoint
from skin_model.training.config import split_description

REPO = Path(__file__).resolve().parents[3]


def _released(rev: str) -> dict[str, torch.Tensor]:
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:weights/{WEIGHTS_FILE}"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"git history without {rev} (a shallow clone?): {done.stderr.decode()[:200]}")
    return load(done.stdout)


def _script() -> ModuleType:
    """scripts/release_teacher.py, imported as a module."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import release_teacher
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return release_teacher


@pytest.mark.slow
def test_teacher_holds_the_released_weights_at_their_own_inputs(tmp_path: Path) -> None:
    release_teacher = _script()
    pair, single = _released(release_teacher.PAIR_RELEASE), _released(release_teacher.SINGLE_RELEASE)
    card = release_teacher.build(tmp_path / "teacher")
    model, loaded = checkpoint.load(tmp_path / "teacher", strict=False)
    assert loaded.sha256 == card.sha256 and loaded.data.split == split_description(0)
    assert [m.data_config.input_size for m in (model, *model.members)] == [(224, 224), (160, 160), (128, 128)]
    state = model.state_dict()
    sources = {"": pair, "members.0.": single, "members.1.": {k[len("members.0."):]: v for k, v in pair.items()
                                                             if k.startswith("members.0.")}}
    for prefix, source in sources.items():
        for part in ("encoder.", "photo_head."):
            keys = [k for k in source if k.startswith(part)]
            assert keys
            assert all(torch.equal(state[prefix + k], source[k]) for k in keys), prefix + part


@pytest.mark.slow
def test_further_weights_join_the_teacher_as_members(tmp_path: Path) -> None:
    release_teacher = _script()
    _released(release_teacher.PAIR_RELEASE)
    shipped, _ = checkpoint.load(REPO / "weights", strict=False)
    release_teacher.build(tmp_path / "teacher", [REPO / "weights"])
    model, _ = checkpoint.load(tmp_path / "teacher", strict=False)
    assert [m.data_config.input_size for m in (model, *model.members)] == [
        (224, 224), (160, 160), (128, 128), shipped.data_config.input_size]
    last = model.members[-1]
    for part, source in ((last.encoder, shipped.encoder), (last.photo_head, shipped.photo_head)):
        theirs = source.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in part.state_dict().items())
