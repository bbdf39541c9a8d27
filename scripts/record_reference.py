"""Record what the shipped weights output on 20 real HAM10000 photos (photos, photos with patient
context, sequences, Grad-CAM targets and peaks) into tests/data/reference_outputs.json, which
tests/unit/test_reference_outputs.py holds the code to. Run it once, with the code that ships new
weights, after checking their figures:  python scripts/record_reference.py [DATA]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from skin_model.data.ham10000 import load_ham10000
from skin_model.io.images import load_image
from skin_model.predict import load_predictor

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference_outputs.json"


def photo_ids(table) -> tuple[list[str], list[str]]:
    """Two photos of each class (the first by image_id), then the photos of the first three lesions with two."""
    table = table.sort_values("image_id")
    ids = [i for _, rows in table.groupby("dx", sort=True) for i in rows.image_id[:2]]
    multi = table.groupby("lesion_id").filter(lambda g: len(g) == 2).sort_values(["lesion_id", "image_id"])
    lesions = list(dict.fromkeys(multi.lesion_id))[:3]
    return ids + list(multi[multi.lesion_id.isin(lesions)].image_id), lesions


def main(data: str = "../shared/ham10000") -> None:
    torch.set_num_threads(1)
    table = load_ham10000(data).table
    ids, lesions = photo_ids(table)
    path = dict(zip(table.image_id, table.path))
    predictor = load_predictor(device="cpu")
    out = {"weights_sha256": predictor.card.sha256, "image_ids": ids, "photos": [], "context": [], "sequences": []}
    for i in ids[:14]:
        out["photos"].append(predictor.predict([load_image(path[i])]).photos[0])
        out["context"].append(predictor.predict([load_image(path[i])], age=55, sex="female", site="back").photos[0])
    for lesion, pair in zip(lesions, (ids[14:16], ids[16:18], ids[18:20])):
        p = predictor.predict([load_image(path[i]) for i in pair])
        out["sequences"].append({"lesion_id": lesion, "photos": p.photos, "sequence": p.sequence})
    analysis = predictor.analyse([load_image(path[i]) for i in ids[:4]], sequence=False, method="Grad-CAM")
    out["heatmap_targets"] = [h.target for h in analysis.heatmaps]
    out["heatmap_peaks"] = [list(h.peak()) for h in analysis.heatmaps]
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} for weights {out['weights_sha256'][:12]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
