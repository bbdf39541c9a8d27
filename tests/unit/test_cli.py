"""skin_model.cli: `skin-model predict` in-process and as `python -m skin_model`, bad files included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from helpers import build_tiny_model

from skin_model.cli import build_parser, main
from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER
from skin_model.model import checkpoint
from skin_model.model.card import DatasetInfo, ModelCard, TrustSettings
from skin_model.training.config import TrainConfig
from skin_model.trust.triage import TriageRule

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path, lesion_photo) -> dict[str, str]:
    """A good photo, a second good photo, and three files that are not photos."""
    good = tmp_path / "good.jpg"
    lesion_photo().save(good, quality=90)
    other = tmp_path / "later.jpg"
    lesion_photo(centre=(0.35, 0.6), radii=(0.3, 0.25), seed=1).save(other, quality=90)
    corrupt = tmp_path / "corrupt.jpg"
    data = good.read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image\n")
    return {k: str(v) for k, v in
            {"good": good, "later": other, "corrupt": corrupt, "empty": empty, "text": text}.items()}


def _check_entry(entry: dict) -> None:
    probs = entry["probabilities"]
    assert list(probs) == list(CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert entry["prediction"] == max(probs, key=probs.get)


def test_predict_json_with_bad_files(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    bad = [files["corrupt"], files["empty"], files["text"]]
    rc = main(["predict", files["good"], *bad, "--json", "--weights", str(tiny_weights), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, bad):
        assert line.startswith(f"skin-model: error: {path}: ")
    assert "truncated" in lines[0] and "the file is empty" in lines[1] and "not a readable image" in lines[2]
    result = json.loads(out)
    assert set(result) == {"classes", "images", "sequence", "triage"}
    assert result["classes"] == list(CLASSES)
    assert result["sequence"] is None
    assert [item["file"] for item in result["images"]] == [files["good"]]
    _check_entry(result["images"][0])


def test_predict_all_good_exits_zero(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    rc = main(["predict", files["good"], files["later"], "--json", "--weights", str(tiny_weights)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    images = json.loads(out)["images"]
    assert [i["file"] for i in images] == [files["good"], files["later"]]
    for item in images:
        _check_entry(item)
    # separate photos are scored independently
    assert images[0]["probabilities"] != images[1]["probabilities"]


def test_predict_sequence(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    rc = main(["predict", files["good"], files["later"], "--sequence", "--json", "--weights", str(tiny_weights)])
    out, _ = capsys.readouterr()
    assert rc == 0
    result = json.loads(out)
    seq = result["sequence"]
    assert isinstance(seq, dict) and "file" not in seq
    assert seq["photos"] == [files["good"], files["later"]]  # which files the sequence read, in order
    _check_entry(seq)
    # the untrained sequence head: the sequence is the mean of the photos' probabilities
    expected = np.mean([[i["probabilities"][c] for c in CLASSES] for i in result["images"]], axis=0)
    assert np.allclose([seq["probabilities"][c] for c in CLASSES], expected, atol=1e-5)


def test_predict_readable_lines(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    rc = main(["predict", files["good"], files["later"], "--sequence", "--weights", str(tiny_weights)])
    out, _ = capsys.readouterr()
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == DISCLAIMER
    for line, name in zip(lines, [files["good"], files["later"], "sequence of 2 photos"]):
        assert line.startswith(f"{name}: ")
        headline, ranked = line.split(": ", 1)[1].split(" | ")  # the tiny weights carry no triage rule
        code = ranked.split(" ", 1)[0]
        assert code in CLASSES
        assert headline.startswith((f"Most likely {CLASS_NAMES[code]} (", f"Inconclusive: top class {CLASS_NAMES[code]} at "))
        ranked = ranked.split(", ")
        assert len(ranked) == 3
        scores = [float(r.split(" ")[1].rstrip("%")) for r in ranked]
        assert scores == sorted(scores, reverse=True)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_plain_text_ends_with_the_disclaimer(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    """The plain-text output carries the research-demo disclaimer the PDF and FHIR reports carry; --json stays
    pure JSON."""
    rc = main(["predict", files["good"], "--weights", str(tiny_weights)])
    out, _ = capsys.readouterr()
    assert rc == 0 and out.strip().splitlines()[-1] == DISCLAIMER
    main(["predict", files["good"], "--json", "--weights", str(tiny_weights)])
    assert DISCLAIMER not in capsys.readouterr().out


def test_triage_leads_every_output(files: dict[str, str], tmp_path: Path, capsys) -> None:
    """With a triage rule in the card the decision's headline comes first in the JSON and the text,
    and the rule's operating point is printed (threshold 0: every photo is referred)."""
    weights = tmp_path / "weights"
    malignant = ("akiec", "bcc", "mel")
    sequences = TriageRule(threshold=0.999, malignant=malignant, sensitivity=0.92, specificity=0.5,
                           basis="validation lesions' sequences of 2+ photos")
    rule = TriageRule(threshold=0.0, malignant=malignant, sensitivity=0.9, specificity=0.7, sequence=sequences)
    checkpoint.save(build_tiny_model(), weights, ModelCard(name="test", trust=TrustSettings(triage=rule)))
    assert main(["predict", files["good"], files["later"], "--sequence", "--json", "--weights", str(weights)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["triage"]["threshold"] == 0.0 and result["triage"]["sequence"]["threshold"] == 0.999
    for entry in [*result["images"], result["sequence"]]:
        d = entry["decision"]
        p = entry["probabilities"]
        assert d["malignant_probability"] == pytest.approx(p["akiec"] + p["bcc"] + p["mel"], abs=1e-6)
    for entry in result["images"]:
        assert entry["status"] == entry["decision"]["status"] == "see_dermatologist" and entry["decision"]["refer"]
        assert entry["decision"]["headline"].endswith(": see a dermatologist")
    # the sequence is judged by its own threshold, fitted on sequences
    assert result["sequence"]["decision"]["refer"] is False
    assert "below the triage threshold 99.9%" in result["sequence"]["decision"]["detail"]
    assert main(["predict", files["good"], "--weights", str(weights)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{files['good']}: ") and ": see a dermatologist | malignant " in lines[0]
    assert lines[1] == ("See a dermatologist when the probability of a malignant lesion (akiec + bcc + mel) is at least "
                        "0.0% for a photo (chosen on validation photos for sensitivity \u2265 90%: sensitivity 90%, "
                        "specificity 70%), and at least 99.9% for a sequence of photos of one lesion (chosen on "
                        "validation lesions' sequences of 2+ photos for sensitivity \u2265 90%: sensitivity 92%, "
                        "specificity 50%).")
    assert lines[-1] == DISCLAIMER


def test_predict_with_patient_context(files: dict[str, str], tiny_weights: Path, capsys) -> None:
    main(["predict", files["good"], "--json", "--weights", str(tiny_weights)])
    plain = json.loads(capsys.readouterr().out)["images"][0]["probabilities"]
    rc = main(["predict", files["good"], "--json", "--weights", str(tiny_weights),
               "--age", "70", "--sex", "male", "--site", "back"])
    context = json.loads(capsys.readouterr().out)["images"][0]["probabilities"]
    assert rc == 0 and context != plain


def test_only_bad_files(files: dict[str, str], tmp_path: Path, capsys) -> None:
    # no photo can be read: the weights are never needed, and each file is reported
    rc = main(["predict", files["empty"], str(tmp_path / "absent.jpg"), "--json",
               "--weights", str(tmp_path / "no weights")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert json.loads(out)["images"] == []
    assert "absent.jpg: file not found" in err and files["empty"] in err


def test_missing_weights_is_a_clean_error(files: dict[str, str], tmp_path: Path, capsys) -> None:
    rc = main(["predict", files["good"], "--weights", str(tmp_path / "no weights")])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.startswith("skin-model: error: model card not found")
    assert len(err.strip().splitlines()) == 1


def test_unavailable_device_is_a_clean_error(files: dict[str, str], tiny_weights: Path, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["predict", files["good"], "--weights", str(tiny_weights), "--device", "cuda"])
    assert rc == 1 and "CUDA is not available" in capsys.readouterr().err


def test_evaluate_without_data_is_a_clean_error(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    rc = main(["evaluate", "--weights", str(tiny_weights), "--data", str(tmp_path / "nowhere")])
    assert rc == 1 and "HAM10000 folder not found" in capsys.readouterr().err


def test_train_options_mirror_the_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--epochs", "3", "--batch-size", "16", "--limit", "10", "--data", "x"])
    assert (args.epochs, args.batch_size, args.limit, args.data) == (3, 16, 10, "x")
    defaults = parser.parse_args(["train"])
    for name, value in vars(TrainConfig()).items():
        assert getattr(defaults, name) == value, name


def test_every_train_option_parses_to_its_annotated_type() -> None:
    parser = build_parser()
    samples = {"int": "3", "float": "1.5", "str": "abc", "bool": "false"}
    for f in fields(TrainConfig):
        base = str(f.type).replace(" | None", "")
        flag = "--" + f.name.replace("_", "-")
        value = getattr(parser.parse_args(["train", flag, samples[base]]), f.name)
        assert type(value).__name__ == base, (f.name, value)
    # yes/no options: a value, or the bare flag for true
    assert parser.parse_args(["train", "--channels-last", "no"]).channels_last is False
    assert parser.parse_args(["train", "--cpu-bf16"]).cpu_bf16 is True
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--fit-trust", "maybe"])


def test_usage_errors() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["predict"])
    assert info.value.code == 2


@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights on a real EfficientNet-Lite: a fresh interpreter knows only the package's backbones, not the
    stub the in-process tests register."""
    directory = tmp_path_factory.mktemp("lite_weights")
    checkpoint.save(build_tiny_model(backbone="efficientnet-lite0"), directory, ModelCard(name="test"))
    return directory


def test_module_entry_point_has_no_traceback(files: dict[str, str], lite_weights: Path) -> None:
    env = {**os.environ, "SKIN_MODEL_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "skin_model", "predict", files["good"], files["corrupt"], files["empty"],
           files["text"], "--json", "--weights", str(lite_weights)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("skin-model: error: ")]
    assert len(errors) == 3
    for path in (files["corrupt"], files["empty"], files["text"]):
        assert sum(path + ":" in line for line in errors) == 1
    result = json.loads(proc.stdout)
    assert set(result) == {"classes", "images", "sequence", "triage"}
    assert [item["file"] for item in result["images"]] == [files["good"]]
    _check_entry(result["images"][0])


def test_calibrate_takes_the_split_from_the_card() -> None:
    """Refitting weights on another split than they were trained on would score their training photos."""
    from skin_model.cli import split_seed_of

    card = ModelCard(data=DatasetInfo(split="lesion-grouped, stratified by dx, 70/15/15, seed 3"))
    assert split_seed_of(card, None) == 3 and split_seed_of(card, 3) == 3
    with pytest.raises(ValueError, match="split seed 3"):
        split_seed_of(card, 0)
    assert split_seed_of(ModelCard(), None) == 0 and split_seed_of(ModelCard(), 5) == 5


def test_folders_take_the_suffixes_the_app_accepts(tmp_path: Path) -> None:
    """A folder given to `predict` yields the files of every suffix an upload may have (any case), in name
    order, and nothing else."""
    from skin_model.cli import _expand
    from skin_model.io.images import ACCEPTED_SUFFIXES

    folder = tmp_path / "visits"
    folder.mkdir()
    names = [f"{i:02d}{suffix.upper() if i % 2 else suffix}" for i, suffix in enumerate(ACCEPTED_SUFFIXES)]
    for name in [*names, "notes.txt", "scan.pdf", ".hidden.jpg"]:
        (folder / name).write_bytes(b"x")
    files, errors = _expand([str(folder)])
    assert errors == [] and [Path(f).name for f in files] == sorted(names)
    (tmp_path / "empty").mkdir()
    files, errors = _expand([str(tmp_path / "empty")])
    assert files == [] and len(errors) == 1 and all(s in errors[0] for s in ACCEPTED_SUFFIXES)


def test_resume_refuses_other_options(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A resumed run keeps its saved options: others given with --resume are refused, not silently dropped."""
    assert main(["train", "--resume", str(tmp_path), "--epochs", "40", "--cpu-bf16"]) == 1
    assert "drop --epochs, --cpu-bf16" in capsys.readouterr().err
