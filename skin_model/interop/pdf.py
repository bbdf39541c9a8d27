"""A printable PDF report of a prediction (fpdf2; no matplotlib).

    >>> analysis = predictor.analyse(photos, method="Grad-CAM")
    >>> pdf = pdf_report(analysis.prediction, photos, names, predictor.card, heatmaps=analysis.heatmaps,
    ...                  opacity=0.45, dates=dates)
    >>> Path("report.pdf").write_bytes(pdf)

The report has a title and generation date, the research-demo disclaimer (also in
every page footer), the model name, version and weights sha256, the sequence
prediction with an evolution chart (per-visit class probabilities, drawn with
fpdf's vector primitives) when there are several photos, and for each photo the
photo beside its heatmap overlay, its status and a probability table (full class
names, malignant classes marked). The report draws each overlay itself, at the opacity it
is given, and its caption names the method, the class explained and that opacity, so the
caption cannot describe another heatmap than the one printed. A date the user typed in
(not read from the photo's file) is marked as such. What it shares with the FHIR and CSV
exports is in `interop.common`.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image

from skin_model.constants import CLASS_NAMES, CLASSES, DISCLAIMER, MALIGNANT
from skin_model.interop.common import ENTERED_MARK, iso_date, jpeg, visit_label
from skin_model.model.card import ModelCard
from skin_model.trust.decision import Decision, percent, triage_rule_text

if TYPE_CHECKING:  # Grad-CAM (torch, OpenCV) is not needed to write a report
    from skin_model.explain.heatmap import Heatmap

TITLE = "Skin-lesion analysis report"
# One colour per class (malignant classes in warm colours), used by the chart and its legend.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "akiec": (255, 127, 14), "bcc": (148, 52, 110), "bkl": (140, 86, 75), "df": (44, 160, 44),
    "mel": (214, 39, 40), "nv": (31, 119, 180), "vasc": (23, 190, 207),
}
EMBED_MAX_SIDE = 800  # pixels; photos are downscaled before embedding to keep the file small
PAIR_GAP = 6.0  # mm between a photo and its heatmap
PAIR_CAPTIONS = 10.0  # mm below a photo pair for the captions
DEFAULT_OPACITY = 0.45  # the heatmap opacity when the caller does not say (the app's slider starts there)
ROW = 5.5  # mm, probability table row height


def _t(text: Any) -> str:
    """Core PDF fonts are Latin-1: replace anything else (file names may hold any character)."""
    text = str(text).replace("\u2014", "-").replace("\u2013", "-").replace("\u2019", "'").replace("\u2265", ">=")
    return text.encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def footer(self) -> None:
        self.set_y(-13)
        self.set_font("Helvetica", "I", 7)
        self.set_text_color(110, 110, 110)
        self.cell(0, 4, _t(f"Research demo, not a medical device. Not for diagnosis.   Page {self.page_no()}/{{nb}}"),
                  align="C")
        self.set_text_color(0, 0, 0)


def _heading(pdf: FPDF, text: str, size: int = 12) -> None:
    pdf.set_font("Helvetica", "B", size)
    pdf.cell(0, 7, _t(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _ensure_space(pdf: FPDF, height: float) -> None:
    if pdf.get_y() + height > pdf.page_break_trigger:
        pdf.add_page()


def _probability_table(pdf: FPDF, probs: dict[str, float]) -> None:
    widths = (16, 86, 24, 22, 32)
    top = max(probs, key=probs.__getitem__)
    _ensure_space(pdf, ROW * (len(CLASSES) + 1) + 2)
    pdf.set_font("Helvetica", "B", 8)
    pdf.set_fill_color(235, 235, 235)
    for w, head in zip(widths, ("Code", "Class", "Malignant", "Probability", "")):
        pdf.cell(w, ROW, head, border=1, fill=True)
    pdf.ln()
    for code in sorted(CLASSES, key=probs.__getitem__, reverse=True):
        p = float(probs[code])
        pdf.set_font("Helvetica", "B" if code == top else "", 8)
        if code in MALIGNANT:
            pdf.set_text_color(180, 20, 20)
        pdf.cell(widths[0], ROW, code, border=1)
        pdf.cell(widths[1], ROW, _t(CLASS_NAMES[code]), border=1)
        pdf.cell(widths[2], ROW, "yes (!)" if code in MALIGNANT else "no", border=1)
        pdf.set_text_color(0, 0, 0)
        pdf.cell(widths[3], ROW, f"{100 * p:.1f}%", border=1, align="R")
        x, y = pdf.get_x(), pdf.get_y()
        pdf.cell(widths[4], ROW, "", border=1)
        pdf.set_fill_color(*CLASS_COLOURS[code])
        if p > 0.005:
            pdf.rect(x + 1, y + (ROW - 3) / 2, (widths[4] - 2) * min(1.0, p), 3, style="F")
        pdf.ln()
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(2)


def _chart(pdf: FPDF, series: list[dict[str, float] | None], labels: list[str], note: str = "") -> None:
    """Per-visit probability of each class as lines (gaps where a photo was not analysed)."""
    height, left_pad = 62.0, 12.0
    _ensure_space(pdf, height + 22)
    x0 = pdf.l_margin + left_pad
    width = pdf.epw - left_pad - 34
    y0 = pdf.get_y() + 3
    n = len(series)

    def px(i: int) -> float:
        return x0 + (width * i / (n - 1) if n > 1 else width / 2)

    def py(p: float) -> float:
        return y0 + height * (1 - p)

    pdf.set_font("Helvetica", "", 7)
    pdf.set_line_width(0.1)
    for tick in (0, 25, 50, 75, 100):
        pdf.set_draw_color(215, 215, 215)
        pdf.line(x0, py(tick / 100), x0 + width, py(tick / 100))
        pdf.set_xy(pdf.l_margin, py(tick / 100) - 2)
        pdf.cell(left_pad - 1, 4, f"{tick}%", align="R")
    pdf.set_draw_color(0, 0, 0)
    pdf.line(x0, y0, x0, y0 + height)
    pdf.line(x0, y0 + height, x0 + width, y0 + height)
    for i, label in enumerate(labels):
        pdf.set_xy(px(i) - 15, y0 + height + 1)
        pdf.cell(30, 4, _t(label[:22]), align="C")
    for code in CLASSES:
        pdf.set_draw_color(*CLASS_COLOURS[code])
        pdf.set_fill_color(*CLASS_COLOURS[code])
        pdf.set_line_width(0.6 if code in MALIGNANT else 0.35)
        points = [(px(i), py(float(s[code]))) if s is not None else None for i, s in enumerate(series)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                pdf.line(a[0], a[1], b[0], b[1])
        for p in points:
            if p is not None:
                pdf.rect(p[0] - 0.7, p[1] - 0.7, 1.4, 1.4, style="F")
    legend_x = x0 + width + 4
    for k, code in enumerate(CLASSES):
        y = y0 + 2 + 6 * k
        pdf.set_draw_color(*CLASS_COLOURS[code])
        pdf.set_line_width(0.6 if code in MALIGNANT else 0.35)
        pdf.line(legend_x, y, legend_x + 6, y)
        pdf.set_xy(legend_x + 7, y - 2)
        pdf.cell(22, 4, code + (" (malignant)" if code in MALIGNANT else ""))
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.2)
    pdf.set_xy(pdf.l_margin, y0 + height + 7)
    pdf.set_font("Helvetica", "I", 7)
    pdf.multi_cell(0, 3.5, "Per-visit probability of each class (single-photo predictions, in time order). "
                           "Thicker lines: malignant classes. Gaps: photos that were not analysed." + note,
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(2)


def _embed(img: Image.Image) -> io.BytesIO:
    """JPEG bytes (embedded as is by fpdf), at most EMBED_MAX_SIDE pixels a side."""
    return io.BytesIO(jpeg(img, EMBED_MAX_SIDE)[0])


def _pair_size(pdf: FPDF, photo: Image.Image) -> tuple[float, float]:
    box_w, box_h = (pdf.epw - PAIR_GAP) / 2, 60.0
    scale = min(box_w / photo.width, box_h / photo.height)
    return photo.width * scale, photo.height * scale


def _heatmap_caption(heat: Heatmap, probs: dict[str, float], opacity: float) -> str:
    """What the overlay shows: its method, the class it explains (and whether that is the most likely one)
    and the opacity it is drawn at."""
    which = "the most likely class" if heat.target == max(probs, key=probs.__getitem__) else "not the most likely class"
    return (f"Heatmap: {heat.method} for {CLASS_NAMES[heat.target]} ({heat.target}), {which}, "
            f"opacity {opacity:.0%}: where the model looked for that class")


def _photo_pair(pdf: FPDF, photo: Image.Image, overlay: Image.Image | None, caption: str) -> None:
    box_w = (pdf.epw - PAIR_GAP) / 2
    gap = PAIR_GAP
    w, h = _pair_size(pdf, photo)
    _ensure_space(pdf, h + PAIR_CAPTIONS)
    y = pdf.get_y()
    pdf.image(_embed(photo), x=pdf.l_margin, y=y, w=w, h=h)
    pdf.set_font("Helvetica", "I", 7)
    pdf.set_xy(pdf.l_margin, y + h + 0.5)
    pdf.cell(w, 4, "Photo")
    bottom = y + h + 4.5
    if overlay is not None:
        pdf.image(_embed(overlay), x=pdf.l_margin + box_w + gap, y=y, w=w, h=h)
        pdf.set_xy(pdf.l_margin + box_w + gap, y + h + 0.5)
        pdf.multi_cell(box_w, 3.5, _t(caption), new_x=XPos.LEFT, new_y=YPos.NEXT)
        bottom = max(bottom, pdf.get_y())
    pdf.set_font("Helvetica", "", 9)
    pdf.set_xy(pdf.l_margin, bottom + 1.5)


def _decision(pdf: FPDF, decision: Decision) -> None:
    """The decision's headline (red when it refers the lesion or refuses the photo) and its detail,
    word for word as the app and the FHIR report give them."""
    alarm = decision.status in ("see_dermatologist", "out_of_distribution")
    pdf.set_text_color(*((160, 20, 20) if alarm else (0, 0, 0)))
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(0, 5.5, _t(decision.headline), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 8.5)
    pdf.multi_cell(0, 4.5, _t(decision.detail), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(1)


def pdf_report(prediction: Any, photos: Sequence[Image.Image], names: Sequence[str], card: ModelCard,
               heatmaps: Sequence[Heatmap | None] | None = None, dates: Sequence[Any] | None = None,
               generated: datetime.datetime | None = None, opacity: float = DEFAULT_OPACITY,
               dates_entered: Sequence[bool] | None = None) -> bytes:
    """The PDF report (bytes) for photos scored by `prediction` (a skin_model Prediction).

    `heatmaps` are the heatmaps shown with `photos` (skin_model Heatmaps, each knowing its method
    and class; None where there is none), drawn over the photos at `opacity`, the opacity the user
    saw. Photos refused by the out-of-distribution check get none. `dates` are the photo dates
    (date or None each), `dates_entered` which of them the user typed in rather than the file
    holding them; `card` is the model card.
    """
    if len(photos) != len(names) or len(photos) != len(prediction.photos):
        raise ValueError("photos, names and prediction.photos must have the same length")
    heatmaps = list(heatmaps) if heatmaps is not None else [None] * len(photos)
    dates = list(dates) if dates is not None else [None] * len(photos)
    entered = list(dates_entered) if dates_entered is not None else [False] * len(photos)
    if len(heatmaps) != len(photos) or len(dates) != len(photos) or len(entered) != len(photos):
        raise ValueError("heatmaps, dates and dates_entered must have one entry per photo")
    opacity = min(1.0, max(0.0, float(opacity)))  # what Heatmap.overlay draws, so what the caption says
    generated = generated or datetime.datetime.now(datetime.timezone.utc)
    name, version, sha = card.identity()
    threshold = float(getattr(prediction, "inconclusive_below", 0.5))
    statuses = [prediction.status(i) for i in range(len(photos))]

    pdf = _Report(format="A4")
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(15, 15, 15)
    pdf.set_title(TITLE)
    pdf.set_subject("Research demo, not a medical device")
    pdf.set_creator(f"{name} {version}")
    pdf.alias_nb_pages()
    pdf.add_page()

    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, TITLE, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 5, _t(f"Generated {generated.strftime('%Y-%m-%d %H:%M %Z').strip()}  |  "
                      f"{len(photos)} photo{'s' if len(photos) != 1 else ''}"),
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_draw_color(200, 30, 30)
    pdf.set_text_color(160, 20, 20)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5, _t(DISCLAIMER), border=1, padding=2, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.set_draw_color(0, 0, 0)
    pdf.ln(3)

    _heading(pdf, "Model")
    triage = getattr(prediction, "triage", None)
    rule = f" {triage_rule_text(triage)}" if triage else ""
    pdf.multi_cell(0, 4.5, _t(f"{name}, version {version}. A photo is inconclusive when its top class is below "
                              f"{percent(threshold)}.{rule}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Courier", "", 8)
    pdf.cell(0, 4.5, _t(f"weights sha256: {sha}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(3)

    sequence = getattr(prediction, "sequence", None)
    if sequence:
        read = len(getattr(prediction, "sequence_photos", None) or photos)
        _heading(pdf, f"Sequence prediction ({read} photos of one lesion, in time order)")
        _decision(pdf, prediction.sequence_decision())
        how = getattr(prediction, "sequence_method", None)
        if how:
            pdf.multi_cell(0, 5, _t(f"How the photos are combined: {how}."), align="L",
                           new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        _probability_table(pdf, sequence)
    if len(photos) > 1:
        _heading(pdf, "Evolution across visits")
        labels = [visit_label(i, d, e) for i, (d, e) in enumerate(zip(dates, entered))]
        series = [p if s != "out_of_distribution" else None for p, s in zip(prediction.photos, statuses)]
        note = (f" Dates marked {ENTERED_MARK} were entered by the user, not read from the photo's file."
                if any(e and iso_date(d) for d, e in zip(dates, entered)) else "")
        _chart(pdf, series, labels, note)

    for i, (photo, label) in enumerate(zip(photos, names)):
        # heading, photo pair, verdict line and table stay together on one page
        _ensure_space(pdf, 7 + _pair_size(pdf, photo)[1] + PAIR_CAPTIONS + 10 + ROW * (len(CLASSES) + 1) + 2)
        when = iso_date(dates[i])
        when = f"{when}, entered by the user" if when and entered[i] else when
        _heading(pdf, f"Photo {i + 1}: {label}" + (f" ({when})" if when else ""), size=11)
        status = statuses[i]
        heat = heatmaps[i] if status != "out_of_distribution" else None  # the app shows none for a refused photo
        _photo_pair(pdf, photo, heat.overlay(photo, opacity) if heat is not None else None,
                    _heatmap_caption(heat, prediction.photos[i], opacity) if heat is not None else "")
        _decision(pdf, prediction.decision(i))
        if status == "out_of_distribution":
            pdf.ln(2)
            continue
        _probability_table(pdf, prediction.photos[i])
    return bytes(pdf.output())
