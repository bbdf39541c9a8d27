"""The figures of an evaluation report (`evaluate_split`'s output, the card's `metrics`) as the
rows and sentences that the CLI, the model card page and the README show, built once here."""

from __future__ import annotations

from typing import Any

from skin_model.metrics import TABLE_METRICS

VIEW_NAMES = {"full": "full frame", "centre_crop": "centre square crop", "zoom_0.6": "zoomed (60% centre crop)"}


def performance_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated view: {"evaluation": name, n, accuracy, ...} (views missing from the
    report are left out, so a partial or older card still gives a table)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, figures: dict[str, Any] | None) -> None:
        if figures:
            rows.append({"evaluation": name, **{k: figures[k] for k in TABLE_METRICS}})

    for key, figures in (report.get("single_photo") or {}).items():
        add(f"single photo, {VIEW_NAMES.get(key, key)}", figures)
    for key, figures in (report.get("with_patient_context") or {}).items():
        add(f"single photo + patient context, {VIEW_NAMES.get(key, key)}", figures)
    add("per lesion (sequence), all lesions", report.get("per_lesion_sequence"))
    multi = report.get("multi_photo_lesions") or {}
    add("lesions with 2+ photos: each photo", multi.get("single_photo"))
    add("lesions with 2+ photos: mean of photos", multi.get("mean_of_photos"))
    add("lesions with 2+ photos: sequence head", multi.get("sequence"))
    return rows


def interval_notes(report: dict[str, Any]) -> list[str]:
    """The 95% bootstrap intervals (over lesions) in words."""
    intervals = report.get("intervals") or {}
    notes = []
    if "single_photo_full" in intervals:
        ci = intervals["single_photo_full"]["full"]
        notes.append("single photo, full frame: balanced accuracy {:.3f} to {:.3f}, accuracy {:.3f} to {:.3f}".format(
            *ci["balanced_accuracy"], *ci["accuracy"])
            + (", melanoma recall {:.3f} to {:.3f}".format(*ci["melanoma_recall"]) if "melanoma_recall" in ci else ""))
    if "multi_photo_lesions" in intervals:
        seq = intervals["multi_photo_lesions"]["sequence"]
        if not any(seq["balanced_accuracy_minus_mean_of_photos"]):
            notes.append("lesions with 2+ photos: the sequence prediction's balanced accuracy equals that of the "
                         "mean of the photos in every resample (no difference)")
        else:
            notes.append("lesions with 2+ photos, sequence minus mean of photos (balanced accuracy): {:+.3f} to {:+.3f} "
                         "(ahead in {:.0%} of resamples)".format(*seq["balanced_accuracy_minus_mean_of_photos"],
                                                                seq["share_of_resamples_ahead"]))
    return notes
