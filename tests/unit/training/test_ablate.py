"""skin_model.training.ablate: a tiny greedy ablation on a fake HAM10000 folder (ImageNet Lite0, CPU)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from skin_model.cli import build_parser
from skin_model.training import ablate
from skin_model.training.config import TrainConfig

LEVERS = [("base", {}), ("twice the epochs", {"epochs": 2}), ("EMA", {"ema": 0.9}),
          ("logit-adjusted, no resampling", {"logit_adjust": 1.0, "sampling_power": 1.0})]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, fake_ham_at) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("ablate")
    data = fake_ham_at(root / "ham", "flat", lesions_per_class=4, images_per_lesion=(1, 2))
    base = TrainConfig(data=str(data), epochs=1, batch_size=8, image_size=64, limit=16, device="cpu")
    out = root / "ablation.json"
    return ablate.run(base, LEVERS, out=out), out


def test_one_row_per_lever_each_added_to_the_best_so_far(result: tuple[dict, Path]) -> None:
    res, out = result
    rows = res["rows"]
    assert [r["lever"] for r in rows] == [name for name, _ in LEVERS]
    assert rows[0]["kept"]  # the base recipe is the first best
    assert rows[1]["overrides"] == {"epochs": 2}  # "epochs" multiplies the base epochs
    assert rows[1]["epochs_run"] <= 2
    # a lever is kept exactly when it beats every earlier kept row's score
    best = -float("inf")
    for r in rows:
        assert r["kept"] == (r["val"]["score"] > best)
        best = max(best, r["val"]["score"])
        for view in ("val", "val_flip_tta"):
            assert 0.0 <= r[view]["balanced_accuracy"] <= 1.0
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))


def test_best_flags_reproduce_the_winning_recipe(result: tuple[dict, Path]) -> None:
    res, _ = result
    args = build_parser().parse_args(["train", *res["best_flags"].split()])
    best = res["best"]
    for key in ablate.RECIPE_FIELDS:
        assert getattr(args, key) == best[key], key
    assert {f.name for f in fields(TrainConfig)} == set(best)


def test_table_has_a_row_per_lever(result: tuple[dict, Path]) -> None:
    res, _ = result
    table = ablate.format_table(res).splitlines()
    assert table[0].startswith("| lever")
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == [name for name, _ in LEVERS]


def test_chosen_levers_follow_the_base_row() -> None:
    assert ablate.choose_levers(None, LEVERS) == LEVERS
    assert ablate.choose_levers("3, 1", LEVERS) == [LEVERS[0], LEVERS[1], LEVERS[3]]
    assert ablate.choose_levers("0,2", LEVERS) == [LEVERS[0], LEVERS[2]]
    for bad in ("4", "-1", "one"):
        with pytest.raises(ValueError, match="--levers"):
            ablate.choose_levers(bad, LEVERS)
