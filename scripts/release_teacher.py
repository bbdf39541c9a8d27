"""Rebuild a distillation teacher that costs no training: the three EfficientNet-Lite0s released so
far, all trained on the same lesion-grouped split, their photo logits averaged.

- the H200-trained 224 px model and the CPU-trained 128 px model of the two-member ensemble
  released at git ae924d2,
- the CPU-trained 160 px model shipped since git f00de46.

Their weights live in this repository's history (validation macro AUC of the three: 0.957).
Further weights folders given after the output (the shipped `weights`, say) join as members:
    python scripts/release_teacher.py runs/teacher [weights ...]
    skin-model train --data ../shared/ham10000 --out runs/student --teacher runs/teacher ...
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file

from skin_model import constants as C
from skin_model.data.config import DataConfig
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard
from skin_model.model.ensemble import combine
from skin_model.model.network import SkinLesionNet

ROOT = Path(__file__).resolve().parent.parent
PAIR_RELEASE = "ae924d2"  # 224 px (H200) + 128 px (CPU) ensemble
SINGLE_RELEASE = "5bf4c80"  # the 160 px CPU model, unchanged since f00de46 (trust layer refitted since)


def from_history(rev: str, name: str, into: Path) -> Path:
    """One file of `weights/` as it was at `rev`."""
    blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:weights/{name}"], check=True,
                          capture_output=True).stdout
    (into / name).write_bytes(blob)
    return into / name


def build(out: Path, extra: Sequence[Path] = ()) -> ModelCard:
    """Split the pair into two single models (the card format of their release is no longer read),
    then `combine` the 224 px model with the 160 px and 128 px ones and any `extra` folders."""
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "single"
        single.mkdir()
        for name in (C.WEIGHTS_FILE, C.CARD_FILE):
            from_history(SINGLE_RELEASE, name, single)
        data = checkpoint.load(single, strict=False)[1].data
        pair = load_file(str(from_history(PAIR_RELEASE, C.WEIGHTS_FILE, Path(tmp))))
        parts = {224: {k: v for k, v in pair.items() if not k.startswith("members.")},
                 128: {k[len("members.0."):]: v for k, v in pair.items() if k.startswith("members.0.")}}
        for size, state in parts.items():
            net = SkinLesionNet("efficientnet-lite0", size, pretrained=False, data_config=DataConfig(size))
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or any(k.startswith(("encoder.", "photo_head.")) for k in missing):  # what combine takes
                raise RuntimeError(f"the {PAIR_RELEASE} weights do not fit: {unexpected[:3]} {missing[:3]}")
            checkpoint.save(net, Path(tmp) / str(size), ModelCard(name=f"Lite0 {size} px ({PAIR_RELEASE})", data=data),
                            onnx=False)
        return combine(Path(tmp) / "224", [single, Path(tmp) / "128", *extra], out)[1]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(build(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]).name)
