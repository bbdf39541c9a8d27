"""`skin-model`: train, evaluate and predict from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .constants import CLASS_NAMES, CLASSES


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    card = run(cfg)
    print(json.dumps({k: card["metrics"]["single_photo"]["full"][k]
                      for k in ("accuracy", "balanced_accuracy", "macro_auc", "ece")}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import load_ham10000
    from .evaluate import evaluate_split, format_table, to_json
    from .predict import load_predictor

    predictor = load_predictor(args.weights, args.device)
    report = evaluate_split(predictor.model, load_ham10000(args.data), args.split, predictor.device,
                            seed=args.seed, limit=args.limit)
    if args.output:
        Path(args.output).write_text(to_json(report))
    print(to_json(report) if args.json else format_table(report))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .images import ImageError, load_image
    from .predict import load_predictor

    photos, names, failed = [], [], False
    for path in args.images:
        try:
            photos.append(load_image(path, name=path))
            names.append(path)
        except ImageError as exc:
            print(f"skin-model: error: {exc}", file=sys.stderr)
            failed = True
    result = {"classes": list(CLASSES), "images": [], "sequence": None}
    if photos:
        predictor = load_predictor(args.weights, args.device)
        context = {"age": args.age, "sex": args.sex, "site": args.site}
        if args.sequence:
            pred = predictor.predict(photos, sequence=True, **context)
            probs, result["sequence"] = pred.photos, _entry(None, pred.sequence)
        else:
            probs = predictor.predict_each(photos, **context)
        result["images"] = [_entry(n, p) for n, p in zip(names, probs)]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for item in result["images"]:
            print(_line(item["file"], item))
        if result["sequence"]:
            print(_line("sequence", result["sequence"]))
    return 2 if failed else 0


def _entry(name: str | None, probs: dict[str, float]) -> dict:
    from .predict import Prediction

    top, _ = Prediction.top(probs)
    out = {"probabilities": probs, "prediction": top}
    return {"file": name, **out} if name is not None else out


def _line(name: str, item: dict) -> str:
    p = item["probabilities"]
    ranked = ", ".join(f"{c} {p[c]:.3f}" for c in sorted(p, key=p.get, reverse=True)[:3])
    return f"{name}: {item['prediction']} ({CLASS_NAMES[item['prediction']]}) | {ranked}"


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="skin-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on HAM10000 and write weights + model card")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = type(default) if default is not None else (int if f.name == "limit" else str)
        train.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default)
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="metrics on a lesion-grouped split")
    ev.add_argument("--data", help="HAM10000 folder (default: $HAM10000_DIR)")
    ev.add_argument("--weights", help="folder with weights and model card (default: shipped)")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, help="only the first N photos of the split")
    ev.add_argument("--device")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--output", help="also write the JSON report here")
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="class probabilities of photos")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--sequence", action="store_true", help="read the files as one lesion's photos, in order")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--weights")
    pr.add_argument("--device")
    pr.add_argument("--age", type=float)
    pr.add_argument("--sex", choices=("male", "female"))
    pr.add_argument("--site", help="body site, e.g. back, face, lower extremity")
    pr.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"skin-model: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
