"""Rebuild a distillation teacher that costs no training: the three EfficientNet-Lite0s released so
far, all trained on the same lesion-grouped split, their photo logits averaged.

- the H200-trained 224 px model and the CPU-trained 128 px model of the two-member ensemble
  released at git ae924d2,
- the CPU-trained 160 px model shipped since git f00de46.

Their weights live in this repository's history (validation macro AUC of the three: 0.957):
    python scripts/release_teacher.py runs/teacher
    skin-model train --data ../shared/ham10000 --out runs/student --teacher runs/teacher ...
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from skin_model import constants as C
from skin_model.data.config import DataConfig
from skin_model.model import checkpoint
from skin_model.model.card import MemberCard, ModelCard
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


def build(out: Path) -> ModelCard:
    with tempfile.TemporaryDirectory() as tmp:
        single_dir = Path(tmp) / "single"
        single_dir.mkdir()
        for name in (C.WEIGHTS_FILE, C.CARD_FILE):
            from_history(SINGLE_RELEASE, name, single_dir)
        single, card = checkpoint.load(single_dir, strict=False)
        pair = load_file(str(from_history(PAIR_RELEASE, C.WEIGHTS_FILE, Path(tmp))))
    net = SkinLesionNet("efficientnet-lite0", 224, pretrained=False, data_config=DataConfig(224),
                        members=(("efficientnet-lite0", single.data_config), ("efficientnet-lite0", DataConfig(128))))
    # the pair's main model keeps its place; its one member becomes member 1, after the 160 px model
    state = {k.replace("members.0.", "members.1.", 1): v for k, v in pair.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("members.0.", "ood_texture")) for k in missing):
        raise RuntimeError(f"the {PAIR_RELEASE} weights do not fit: unexpected {unexpected[:3]}, missing {missing[:3]}")
    net.members[0].encoder.load_state_dict(single.encoder.state_dict())
    net.members[0].photo_head.load_state_dict(single.photo_head.state_dict())
    net.eval()
    entries = (MemberCard(backbone="efficientnet-lite0", image_size=single.data_config.image_size,
                          source_sha256=card.sha256, training={"finished": card.training.get("finished")}),
               MemberCard(backbone="efficientnet-lite0", image_size=128, training={"release": PAIR_RELEASE}))
    teacher = ModelCard(name=f"distillation teacher: Lite0 224 px ({PAIR_RELEASE}) + 160 px ({SINGLE_RELEASE}) "
                             f"+ 128 px ({PAIR_RELEASE})",
                        architecture="three EfficientNet-Lite0 encoders and photo heads, photo logits averaged",
                        training={"release": PAIR_RELEASE}, data=card.data, members=entries)
    return checkpoint.save(net, out, teacher, onnx=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(build(Path(sys.argv[1])).name)
