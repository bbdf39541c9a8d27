"""`skin-model`: train, evaluate and predict from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER

if TYPE_CHECKING:
    from skin_model.model.card import ModelCard


def _train(args: argparse.Namespace) -> int:
    from skin_model.metrics import HEADLINE_METRICS
    from skin_model.training.train import TrainConfig, run

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if args.resume:
        changed = [f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(TrainConfig(), f.name)]
        if changed:
            raise ValueError("--resume continues with the run's saved options; drop "
                             + ", ".join("--" + name.replace("_", "-") for name in changed))
    card = run(cfg, resume=args.resume)
    if not card.metrics:
        print(f"wrote uncalibrated weights to {cfg.out}; next: skin-model calibrate --weights {cfg.out} --data DIR "
              f"(split seed {cfg.split}, read from the card)")
        return 0
    print(json.dumps({k: card.metrics["single_photo"]["full"][k] for k in HEADLINE_METRICS}, indent=2))
    return 0


def _flag(text: str) -> bool:
    """A yes/no option's value: true/false, yes/no, on/off or 1/0."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _ablate(args: argparse.Namespace) -> int:
    from skin_model.training.ablate import choose_levers, format_table, run
    from skin_model.training.config import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    result = run(cfg, choose_levers(args.levers), out=args.json_out, budget_min=args.budget_min)
    if args.flags_out:
        Path(args.flags_out).write_text(result["best_flags"] + "\n")
    print(format_table(result))
    print(f"best recipe: {result['best_flags']}")
    return 0


def split_seed_of(card: ModelCard, asked: int | None) -> int:
    """The split the weights were trained on, from their card: calibrating or measuring them on
    another split would score photos they were trained on. `asked` must agree when given."""
    trained = card.data.split_seed
    if asked is not None and trained is not None and asked != trained:
        raise ValueError(f"these weights were trained on split seed {trained}; --seed {asked} would fit and measure "
                         "them on photos they were trained on")
    return asked if asked is not None else trained if trained is not None else 0


def _compare(args: argparse.Namespace) -> int:
    from skin_model.data.ham10000 import load_ham10000, split_table
    from skin_model.evaluation.compare import format_comparison, outputs_of, paired_comparison
    from skin_model.io.images import load_image
    from skin_model.predict import load_predictor

    reference, candidate = (load_predictor(w, args.device, engine="torch") for w in (args.reference, args.candidate))
    seed = split_seed_of(reference.card, args.seed)
    if split_seed_of(candidate.card, seed) != seed:
        raise ValueError("the two models were trained on different splits; they cannot be compared on one")
    table = split_table(load_ham10000(args.data), args.split, seed, args.limit)
    photos = [load_image(p) for p in table.path]
    ref, cand = (outputs_of(p.model, p.card, photos) for p in (reference, candidate))
    report = paired_comparison(table.label.to_numpy(), table.lesion_id.to_numpy(),
                               {name: (ref[name], cand[name]) for name in ref}, resamples=args.resamples)
    print(json.dumps(report, indent=2) if args.json else format_comparison(report))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from skin_model.data.ham10000 import load_ham10000
    from skin_model.devices import select_device
    from skin_model.metrics import HEADLINE_METRICS
    from skin_model.model import checkpoint
    from skin_model.training.train import finish

    model, card = checkpoint.load(args.weights, strict=False)
    seed = split_seed_of(card, args.seed)
    device = select_device(args.device)
    out = Path(args.out or args.weights or checkpoint.default_weights_dir())
    card = finish(model.to(device), load_ham10000(args.data), card.training, out, device, seed=seed,
                  members=card.members)
    print(json.dumps({k: card.metrics["single_photo"]["full"][k] for k in HEADLINE_METRICS}, indent=2))
    return 0


def _combine(args: argparse.Namespace) -> int:
    from skin_model.model.ensemble import combine

    _, card = combine(args.main, args.others, args.out)
    print(f"wrote {card.name} to {args.out}; next: skin-model calibrate --weights {args.out} --data DIR")
    return 0


def _export(args: argparse.Namespace) -> int:
    from skin_model.model import checkpoint

    card = checkpoint.export(args.weights)
    graphs = card.onnx
    assert graphs is not None
    directory = args.weights or checkpoint.default_weights_dir()
    written = [(graphs.photo_file, graphs.photo_sha256), (graphs.sequence_file, graphs.sequence_sha256),
               (graphs.heatmap_file, graphs.heatmap_sha256)]
    print(f"wrote {', '.join(f'{name} (sha256 {str(digest)[:12]}…)' for name, digest in written if name)} to "
          f"{directory}, and recorded them in its model card; ONNX Runtime serves them")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from skin_model.constants import CARD_FILE
    from skin_model.data.ham10000 import load_ham10000
    from skin_model.evaluation.evaluate import (
        card_metrics,
        evaluate_heatmaps,
        evaluate_ood,
        evaluate_split,
        format_table,
        to_json,
    )
    from skin_model.model import checkpoint
    from skin_model.model.files import write_card
    from skin_model.predict import load_predictor

    predictor = load_predictor(args.weights, args.device)
    seed = split_seed_of(predictor.card, args.seed)
    ham = load_ham10000(args.data)
    if args.update_card:
        if args.split != "test" or args.limit is not None:
            raise ValueError("--update-card measures the card's figures: the whole test split (no --split, no --limit)")
        photos = int((predictor.card.training.get("config") or {}).get("heatmap_photos", 200))
        report = card_metrics(predictor.model, ham, predictor.card, seed=seed, heatmap_photos=photos)
        directory = Path(args.weights) if args.weights else checkpoint.default_weights_dir()
        write_card(directory, replace(predictor.card, metrics=report))
        print(f"wrote the test figures into {directory / CARD_FILE}; weights and trust layer unchanged")
    else:
        report = evaluate_split(predictor.model, ham, args.split, seed=seed, limit=args.limit, card=predictor.card)
        if args.ood:
            report["ood"] = evaluate_ood(predictor.model, predictor.card, ham, args.split, seed=seed, limit=args.limit)
        if args.heatmaps:
            report["heatmaps"] = evaluate_heatmaps(predictor.model, ham, args.split, seed=seed, limit=args.heatmaps)
    if args.output:
        Path(args.output).write_text(to_json(report))
    print(to_json(report) if args.json else format_table(report))
    return 0


def _expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """Files as given; a folder becomes its images (by suffix, the app's accepted uploads; sorted by name).
    Returns (files, errors)."""
    from skin_model.io.images import ACCEPTED_SUFFIXES

    files, errors = [], []
    for path in paths:
        folder = Path(path)
        if not folder.is_dir():
            files.append(path)
            continue
        found = sorted(str(p) for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in ACCEPTED_SUFFIXES)
        if not found:
            errors.append(f"{path}: the folder holds no images ({', '.join(sorted(ACCEPTED_SUFFIXES))})")
        files += found
    return files, errors


def _predict(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from skin_model.io.images import ImageError, load_image
    from skin_model.predict import load_predictor
    from skin_model.runtime import threads

    paths, errors = _expand(args.images)
    for message in errors:
        print(f"skin-model: error: {message}", file=sys.stderr)
    def decode(path: str) -> Image.Image | ImageError:
        try:
            return load_image(path, name=path)
        except ImageError as exc:
            return exc

    photos, names, failed = [], [], bool(errors)
    with ThreadPoolExecutor(threads()) as pool:  # decoding overlaps: PIL releases the GIL
        for path, decoded in zip(paths, pool.map(decode, paths)):
            if isinstance(decoded, ImageError):
                print(f"skin-model: error: {decoded}", file=sys.stderr)
                failed = True
            else:
                photos.append(decoded)
                names.append(path)
    result = {"classes": list(CLASSES), "images": [], "sequence": None, "triage": None}
    if photos:
        predictor = load_predictor(args.weights, args.device, args.engine)
        context = {"age": args.age, "sex": args.sex, "site": args.site}
        if args.sequence:
            pred = predictor.predict(photos, sequence=True, **context)
            seq = pred.sequence_decision()
            if pred.sequence is not None and seq is not None:
                result["sequence"] = {**_entry(None, pred.sequence), "photos": [names[i] for i in pred.sequence_photos],
                                      "status": seq.status, "decision": seq.to_dict()}
        else:
            pred = predictor.predict_each(photos, **context)
        result["triage"] = predictor.triage.to_json() if predictor.triage else None
        decisions = [pred.decision(i) for i in range(len(photos))]
        result["images"] = [{**_entry(n, p), "status": d.status, "message": pred.rejected(i), "decision": d.to_dict()}
                            for i, (n, p, d) in enumerate(zip(names, pred.photos, decisions))]
        _write_exports(args, predictor, pred, photos, names, context)
    elif args.pdf or args.fhir or args.csv:
        print("skin-model: error: no photo could be read, so no report was written", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for item in result["images"]:
            print(_line(item["file"], item))
        if result["sequence"]:
            print(_line(f"sequence of {len(result['sequence']['photos'])} photos", result["sequence"]))
        if result["images"] and result["triage"]:
            from skin_model.trust.decision import triage_rule_text
            from skin_model.trust.triage import TriageRule

            print(triage_rule_text(TriageRule.from_json(result["triage"])))
        if result["images"]:
            print(DISCLAIMER)  # as on the PDF and FHIR reports: scores alone must not read as a diagnosis
    return 2 if failed else 0


def _write_exports(args: argparse.Namespace, predictor, pred, photos: list, names: list[str], context: dict) -> None:
    """--csv, --pdf and --fhir files (the PDF, when made, is also attached to the FHIR report). The PDF's
    heatmaps explain the class each photo is shown with, given the same patient context. A photo refused
    by the out-of-distribution check gets its message in the CSV and no prediction or probabilities,
    as in the app."""
    from skin_model.io.images import photo_date

    statuses = [pred.status(i) for i in range(len(photos))]
    if args.csv:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "decision", "see_dermatologist", "p_malignant", "prediction", "class_name",
                             "inconclusive", "status", "message", *(f"p_{c}" for c in CLASSES)])
            for i, (name, probs) in enumerate(zip(names, pred.photos)):
                d = pred.decision(i)
                status = d.status
                if status == "out_of_distribution":
                    writer.writerow([name, d.headline, "", "", "", "", "", status, pred.rejected(i) or "",
                                     *([""] * len(CLASSES))])
                    continue
                top = max(probs, key=probs.__getitem__)
                refer = "" if d.refer is None else str(d.refer).lower()
                p_mal = "" if d.malignant_probability is None else f"{d.malignant_probability:.6f}"
                writer.writerow([name, d.headline, refer, p_mal, top, CLASS_NAMES[top], str(d.inconclusive).lower(),
                                 status, "", *(f"{probs[c]:.6f}" for c in CLASSES)])
        print(f"skin-model: wrote {args.csv}", file=sys.stderr)
    if not (args.pdf or args.fhir):
        return
    dates = [photo_date(n) for n in names]
    labels = [Path(n).name for n in names]  # reports name the files, not the folders they came from
    pdf = None
    if args.pdf:
        from skin_model.interop.pdf import pdf_report

        keep = [i for i, s in enumerate(statuses) if s != "out_of_distribution"]
        heatmaps: list = [None] * len(photos)
        for start in range(0, len(keep), 16):
            chunk = keep[start:start + 16]
            for i, heatmap in zip(chunk, predictor.analyse([photos[i] for i in chunk], sequence=False,
                                                           **context).heatmaps):
                heatmaps[i] = heatmap
        pdf = pdf_report(pred, photos, labels, predictor.card, heatmaps=heatmaps, dates=dates)
        Path(args.pdf).write_bytes(pdf)
        print(f"skin-model: wrote {args.pdf}", file=sys.stderr)
    if args.fhir:
        from skin_model.interop.fhir import diagnostic_report, to_json

        bundle = diagnostic_report(pred, photos, labels, predictor.card, dates=dates, pdf=pdf)
        Path(args.fhir).write_text(to_json(bundle), encoding="utf-8")
        print(f"skin-model: wrote {args.fhir}", file=sys.stderr)


def _fetch(args: argparse.Namespace) -> int:
    from skin_model.data.fetch import fetch_ham10000
    from skin_model.data.ham10000 import load_ham10000

    dest = fetch_ham10000(args.dest, base_url=args.base_url, masks=args.masks, keep_archives=args.keep_archives,
                          progress=not args.quiet)
    ham = load_ham10000(dest)
    print(f"HAM10000 is ready in {dest}: {len(ham.table)} photos of {ham.table.lesion_id.nunique()} lesions "
          f"(licence CC BY-NC 4.0; cite Tschandl et al., Sci. Data 5, 180161, 2018)")
    return 0


def _entry(name: str | None, probs: dict[str, float]) -> dict:
    from skin_model.predict import Prediction

    top, _ = Prediction.top(probs)
    out = {"probabilities": probs, "prediction": top}
    return {"file": name, **out} if name is not None else out


def _line(name: str, item: dict) -> str:
    """The decision's headline first (as the app and the reports show it), then the top three classes."""
    decision = item["decision"]
    if item.get("message"):
        return f"{name}: {decision['headline']}"
    from skin_model.trust.decision import percent

    p = item["probabilities"]
    ranked = ", ".join(f"{c} {percent(p[c])}" for c in sorted(p, key=p.get, reverse=True)[:3])
    malignant = ("" if decision["malignant_probability"] is None
                 else f" | malignant {percent(decision['malignant_probability'])}")
    return f"{name}: {decision['headline']}{malignant} | {ranked}"


def build_parser() -> argparse.ArgumentParser:
    from skin_model.training.config import TrainConfig

    parser = argparse.ArgumentParser(prog="skin-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on HAM10000 and write weights + model card")
    ab = sub.add_parser("ablate", help="try the training levers one by one on validation; write the table and "
                                       "the winning recipe's flags")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        # Optional fields (default None) take their type from the annotation, e.g. "float | None".
        kind = type(default) if default is not None else {"int | None": int, "float | None": float}.get(str(f.type), str)
        extra = {"nargs": "?", "const": True} if kind is bool else {}  # a bare --cpu-bf16 means true
        kind = _flag if kind is bool else kind
        for p in (train, ab):
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default, **extra)
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose --out was DIR, from its "
                       "last finished epoch (its saved options are used)")
    train.set_defaults(func=_train)
    ab.add_argument("--json-out", help="write the ablation (rows, best recipe) as JSON here")
    ab.add_argument("--flags-out", help="write the winning recipe's `skin-model train` flags here")
    ab.add_argument("--budget-min", type=float, help="wall-clock budget for all rows together")
    ab.add_argument("--levers", help="comma-separated row numbers of the lever table to try, e.g. 5,6 (row 0, "
                    "the base recipe, always runs first; default: every row)")
    ab.set_defaults(func=_ablate)

    ev = sub.add_parser("evaluate", help="metrics on a lesion-grouped split")
    ev.add_argument("--data", help="HAM10000 folder (default: $HAM10000_DIR)")
    ev.add_argument("--weights", help="folder with weights and model card (default: shipped)")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--seed", type=int, help="split seed (default: the one the weights were trained on)")
    ev.add_argument("--limit", type=int, help="only the first N photos of the split")
    ev.add_argument("--device")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--output", help="also write the JSON report here")
    ev.add_argument("--ood", action="store_true", help="also the out-of-distribution evaluation (AUROC, rejections)")
    ev.add_argument("--heatmaps", type=int, metavar="N", help="also Grad-CAM faithfulness on N photos with masks")
    ev.add_argument("--update-card", action="store_true",
                    help="measure every test figure of the model card again and write them into it (weights and "
                         "trust layer unchanged): after the evaluation gains a figure")
    ev.set_defaults(func=_evaluate)

    cm = sub.add_parser("compare", help="is a candidate model better than a reference beyond noise? paired "
                                        "lesion bootstrap of both on one split (validation by default)")
    cm.add_argument("reference", help="weights folder of the model to beat (e.g. weights)")
    cm.add_argument("candidate", help="weights folder of the new model")
    cm.add_argument("--data", help="HAM10000 folder (default: $HAM10000_DIR)")
    cm.add_argument("--split", default="val", choices=("val", "test"))
    cm.add_argument("--seed", type=int, help="split seed (default: the one in the weights' cards)")
    cm.add_argument("--limit", type=int, help="only the first N photos of the split")
    cm.add_argument("--resamples", type=int, default=1000)
    cm.add_argument("--device")
    cm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cm.set_defaults(func=_compare)

    ca = sub.add_parser("calibrate", help="refit calibration, abstention and OOD thresholds on validation, "
                                          "re-evaluate on test, rewrite weights + card")
    ca.add_argument("--weights", help="folder with weights and model card (default: shipped)")
    ca.add_argument("--out", help="where to write (default: the same folder)")
    ca.add_argument("--data", help="HAM10000 folder (default: $HAM10000_DIR)")
    ca.add_argument("--seed", type=int, help="split seed (default: the one in the weights' card)")
    ca.add_argument("--device")
    ca.set_defaults(func=_calibrate)

    co = sub.add_parser("combine", help="average the photo logits of separately trained weights (an ensemble); "
                                        "then refit with `calibrate`")
    co.add_argument("main", help="weights folder whose LSTM, context head and OOD statistics are kept")
    co.add_argument("others", nargs="+", help="further weights folders (their encoder and photo head are added)")
    co.add_argument("--out", required=True, help="folder to write the ensemble to")
    co.set_defaults(func=_combine)

    ex = sub.add_parser("export", help="export verified weights for ONNX Runtime (the serving engine); train, "
                                       "calibrate and combine do it too")
    ex.add_argument("--weights", help="folder with weights and model card (default: shipped)")
    ex.set_defaults(func=_export)

    pr = sub.add_parser("predict", help="class probabilities of photos")
    pr.add_argument("images", nargs="+", help="photos (JPEG, PNG, DICOM, ...) or folders of them")
    pr.add_argument("--sequence", action="store_true", help="read the files as one lesion's photos, in order")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--weights")
    pr.add_argument("--device", help="cpu (default), or cuda / mps for the torch engine")
    pr.add_argument("--engine", choices=("onnx", "torch"), help="what computes the probabilities (default: ONNX "
                    "Runtime when the weights carry an export, else torch; both give the same figures)")
    pr.add_argument("--age", type=float)
    pr.add_argument("--sex", choices=("male", "female"))
    pr.add_argument("--site", help="body site, e.g. back, face, lower extremity")
    pr.add_argument("--csv", metavar="FILE", help="also write one CSV row per photo (prediction, probabilities)")
    pr.add_argument("--pdf", metavar="FILE", help="also write a PDF report with Grad-CAM heatmaps")
    pr.add_argument("--fhir", metavar="FILE", help="also write a FHIR R4 (R4B) Bundle with a DiagnosticReport, as JSON")
    pr.set_defaults(func=_predict)

    from skin_model.data.fetch import DATAVERSE_URL

    fe = sub.add_parser("fetch-ham10000", help="download HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T)")
    fe.add_argument("dest", help="folder to fill (then use it as --data or $HAM10000_DIR)")
    fe.add_argument("--base-url", default=DATAVERSE_URL, help=f"Dataverse server (default: {DATAVERSE_URL})")
    fe.add_argument("--masks", action="store_true", help="also fetch the lesion segmentation masks")
    fe.add_argument("--keep-archives", action="store_true", help="keep the zip files after unpacking")
    fe.add_argument("--quiet", action="store_true", help="no progress bars")
    fe.set_defaults(func=_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"skin-model: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
