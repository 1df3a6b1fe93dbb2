"""How well confidence sends the right documents to review: fit a calibration, measure it, and report.

Each held-out page is read once; each field is labelled right when its (key path, value) is in the page's
truth (as field F1 counts it), and a document is *wrong* when any field is wrong or missing. Pages no
document schema fits (reading pages, blank pages, pages turned a quarter or upside down, real photos)
have every field wrong except what their truth names. :func:`review_curve` gives, per threshold on a
document's lowest field confidence, the share of right documents and of wrong ones that go to review
(a reading cut at the token limit or not valid for its document type always goes, as in the worker).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from donut_hole.documents.reading import LEVELS, reading_page
from donut_hole.documents.schemas import schema_note
from donut_hole.evaluation.dataset import Sample
from donut_hole.evaluation.metrics import flatten, normalize_dict
from donut_hole.model import locate
from donut_hole.model.confidence import Calibration, expected_calibration_error, reliability_bins
from donut_hole.model.predict import DonutReader
from donut_hole.model.readings import FieldReading, field_readings
from donut_hole.progress import track

OUT_OF_DISTRIBUTION = ("reading page", "blank page", "turned page", "real photo")


@dataclass
class Page:
    """One page to read: its image, its truth (None: no document, every field is wrong) and its group."""

    image: Image.Image | Path
    truth: dict[str, Any] | None
    group: str  # "scan" or one of OUT_OF_DISTRIBUTION


@dataclass
class ReadPage:
    """A page read: its fields with their labels."""

    group: str
    fields: list[FieldReading]
    right: list[bool]
    missing: int  # truth fields not read
    doubtful: bool = False  # cut at the token limit, or not a valid document of its kind: always reviewed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wrong(self) -> bool:
        return self.missing > 0 or not all(self.right) or not self.fields

    @property
    def lowest(self) -> float:
        """The document's review score: its lowest field confidence (0 with no field, or doubtful), as
        the worker routes it (:func:`donut_hole.db.repository.needs_review`)."""
        if self.doubtful:
            return 0.0
        return min((f.confidence for f in self.fields), default=0.0)


def _pairs(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in flatten(normalize_dict(data))]


def label(fields: Sequence[FieldReading], truth: dict[str, Any] | None) -> tuple[list[bool], int]:
    """Per field whether it is right, and how many truth fields were not read."""
    remaining = _pairs(truth) if truth else []
    right = []
    for f in fields:
        pair = (f.name, f.value.strip())
        ok = pair in remaining
        if ok:
            remaining.remove(pair)
        right.append(ok)
    return right, len(remaining)


def out_of_distribution(samples: Sequence[Sample], *, seed: int, n: int) -> list[Page]:
    """``n`` pages of each kind no schema fits: reading pages, blank pages (paper, noise, a smudge) and
    document scans turned 90, 180 or 270 degrees (from ``samples``)."""
    rng = random.Random(seed)
    pages: list[Page] = []
    levels = sorted(LEVELS)
    for i in range(n):
        level = LEVELS[levels[i % len(levels)]]
        size = rng.choice([(448, 448), (640, 480), (480, 640)])
        pages.append(
            Page(
                reading_page(random.Random(f"{seed}/reading/{i}"), size=size, level=level).image,
                None,
                "reading page",
            )
        )
    for i in range(n):
        shade = rng.randint(180, 255)
        noise = np.random.default_rng(seed * 1000 + i).normal(0, rng.uniform(1, 20), (480, 640, 1))
        pixels = np.clip(shade + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
        image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(rng.uniform(0, 2)))
        pages.append(Page(image, None, "blank page"))
    for _ in range(n):
        sample = samples[rng.randrange(len(samples))]
        turn = rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270])
        pages.append(Page(Image.open(sample.image_path).convert("RGB").transpose(turn), None, "turned page"))
    return pages


def real_truth(gt: dict[str, Any]) -> dict[str, Any]:
    """A real photo's truth in the schema's words: the tracking number (spaces removed) and that it is a
    shipping label; its routing code (``reference``) has no field in the schema."""
    return {"document_type": "shipping_label", "tracking_number": str(gt.get("tracking_number", ""))}


def read_pages(
    reader: DonutReader,
    pages: Sequence[Page],
    *,
    calibration: Calibration | None = None,
    progress: bool = True,
) -> list[ReadPage]:
    """Read every page (locating fields) and label its fields."""
    reader.locate = True
    tokenizer = reader.processor.tokenizer
    out: list[ReadPage] = []
    chunk = 8
    for start in track(
        range(0, len(pages), chunk), "reading", total=-(-len(pages) // chunk), enabled=progress
    ):
        group = pages[start : start + chunk]
        images = [
            reader.load(p.image) if isinstance(p.image, Path) else p.image.convert("RGB") for p in group
        ]
        for page, image, prediction in zip(
            group, images, reader.predict_detailed(images, batch_size=4), strict=True
        ):
            geometry = locate.input_geometry(reader.processor.image_processor, image.size)
            fields = field_readings(
                prediction, tokenizer, calibration=calibration, geometry=geometry, stride=reader.stride
            )
            if page.group == "real photo":
                for f in fields:  # the tracking number as printed, with its spaces
                    if f.name == "tracking_number":
                        f.value = f.value.replace(" ", "")
            right, missing = label(fields, page.truth)
            doubtful = prediction.cut or schema_note(prediction.data) is not None
            out.append(ReadPage(page.group, fields, right, missing, doubtful=doubtful))
    return out


def recalibrate(pages: Sequence[ReadPage], calibration: Calibration) -> None:
    """Apply ``calibration`` to already read pages (their fields' features)."""
    for page in pages:
        for f in page.fields:
            if f.features is not None:
                f.confidence = round(calibration.probability(f.features, f.name), 6)


def fit(pages: Sequence[ReadPage], *, l2: float = 1.0) -> Calibration:
    rows, paths, right = [], [], []
    for page in pages:
        for f, ok in zip(page.fields, page.right, strict=True):
            if f.features is not None:
                rows.append(f.features)
                paths.append(f.name)
                right.append(ok)
    return Calibration.fit(rows, paths, right, l2=l2)


def review_curve(pages: Sequence[ReadPage]) -> list[dict[str, float]]:
    """Per threshold (every distinct document score), the shares of right and of wrong documents whose
    lowest field confidence is below it (they go to review)."""
    right = sorted(p.lowest for p in pages if not p.wrong)
    wrong = sorted(p.lowest for p in pages if p.wrong)
    thresholds = sorted({0.0, 1.0001, *(p.lowest for p in pages)})
    curve = []
    for t in thresholds:
        curve.append(
            {
                "threshold": round(t, 6),
                "right_to_review": _share_below(right, t),
                "wrong_to_review": _share_below(wrong, t),
            }
        )
    return curve


def _share_below(values: Sequence[float], t: float) -> float:
    return round(float(np.searchsorted(values, t, side="left")) / len(values), 4) if values else 0.0


def at_budget(curve: Sequence[dict[str, float]], budget: float = 0.10) -> dict[str, float]:
    """The point of the curve that sends the most wrong documents to review with at most ``budget`` of
    the right ones."""
    best = {"threshold": 0.0, "right_to_review": 0.0, "wrong_to_review": 0.0}
    for point in curve:
        if point["right_to_review"] <= budget and point["wrong_to_review"] >= best["wrong_to_review"]:
            best = dict(point)
    return best


def field_ece(pages: Sequence[ReadPage], *, raw: bool = False) -> float:
    confidences = [f.raw if raw else f.confidence for p in pages for f in p.fields]
    right = [ok for p in pages for ok in p.right]
    return expected_calibration_error(confidences, right)


def reliability(
    pages: Sequence[ReadPage], *, raw: bool = False, bins: int = 10
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, fields) per confidence bin, for a reliability plot."""
    confidences = [f.raw if raw else f.confidence for p in pages for f in p.fields]
    return reliability_bins(confidences, [ok for p in pages for ok in p.right], bins=bins)


def groups(pages: Sequence[ReadPage]) -> Iterator[tuple[str, list[ReadPage]]]:
    names = sorted({p.group for p in pages}, key=lambda g: (g != "scan", g))
    for name in names:
        yield name, [p for p in pages if p.group == name]


def report(
    fitted_on: Sequence[ReadPage],
    pages: Sequence[ReadPage],
    calibration: Calibration,
    *,
    budget: float = 0.10,
) -> dict[str, Any]:
    """Before/after figures of a calibration on held-out ``pages`` (read without it): field ECE, the review
    curve, the point at ``budget``, per group of pages."""
    raw_curve = [dict(p) for p in _with_raw(pages)]
    recalibrate(pages, calibration)
    curve = review_curve(pages)
    by_group = {
        name: {
            "documents": len(group),
            "wrong": sum(p.wrong for p in group),
            "median_lowest": sorted(p.lowest for p in group)[len(group) // 2],
            "highest_lowest": max(p.lowest for p in group),
        }
        for name, group in groups(pages)
    }
    return {
        "fitted_on": {"documents": len(fitted_on), "fields": calibration.fitted_on.get("fields")},
        "documents": len(pages),
        "wrong_documents": sum(p.wrong for p in pages),
        "fields": sum(len(p.fields) for p in pages),
        "ece_before": field_ece(pages, raw=True),
        "ece_after": field_ece(pages),
        "budget": budget,
        "before": at_budget(raw_curve, budget),
        "after": at_budget(curve, budget),
        "curve": curve,
        "groups": by_group,
        "reliability_before": reliability(pages, raw=True),
        "reliability_after": reliability(pages),
    }


def _with_raw(pages: Sequence[ReadPage]) -> list[dict[str, float]]:
    """The review curve of the raw confidences (the mean probability of each field's tokens)."""
    saved = [[f.confidence for f in p.fields] for p in pages]
    for p in pages:
        for f in p.fields:
            f.confidence = f.raw
    curve = review_curve(pages)
    for p, values in zip(pages, saved, strict=True):
        for f, value in zip(p.fields, values, strict=True):
            f.confidence = value
    return curve


def markdown(result: dict[str, Any], *, command: str) -> str:
    """The model card's section: ECE before/after, the review point, the curve in steps, per group."""
    before, after = result["before"], result["after"]
    lines = [
        f"Field confidence is calibrated (`calibration.json`, fitted on {result['fitted_on']['documents']} "
        f"held-out pages). Measured on {result['documents']} other pages ({result['wrong_documents']} with a "
        "wrong or missing field), synthetic scans plus pages no schema fits:",
        "",
        "| | raw token probability | calibrated |",
        "|---|---:|---:|",
        f"| expected calibration error (fields) | {result['ece_before']:.3f} | {result['ece_after']:.3f} |",
        f"| wrong documents sent to review with ≤ {result['budget']:.0%} of right ones | "
        f"{before['wrong_to_review']:.1%} | {after['wrong_to_review']:.1%} |",
        f"| that threshold | {before['threshold']:.3f} | {after['threshold']:.3f} |",
        "",
        "Review curve (calibrated; a document goes to review when its lowest field confidence is below "
        "the threshold):",
        "",
        "| threshold | right documents to review | wrong documents to review |",
        "|---:|---:|---:|",
    ]
    for point in _steps(result["curve"]):
        lines.append(
            f"| {point['threshold']:.3f} | {point['right_to_review']:.1%} | {point['wrong_to_review']:.1%} |"
        )
    lines += [
        "",
        "| pages | documents | wrong | median lowest confidence | highest |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, group in result["groups"].items():
        lines.append(
            f"| {name} | {group['documents']} | {group['wrong']} | {group['median_lowest']:.3f} | "
            f"{group['highest_lowest']:.3f} |"
        )
    lines += ["", f"`{command}`"]
    return "\n".join(lines)


def _steps(curve: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """The curve at right-document shares of about 1, 2, 5, 10, 20, 30 and 50 %."""
    out: list[dict[str, float]] = []
    for share in (0.01, 0.02, 0.05, 0.10, 0.20, 0.30, 0.50):
        point = at_budget(curve, share)
        if not out or point != out[-1]:
            out.append(point)
    return out


def plot_reliability(result: dict[str, Any], out: Path) -> Path:
    """A reliability plot (accuracy against confidence, before and after) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    for key, label, color in (
        ("reliability_before", f"raw (ECE {result['ece_before']:.3f})", "#dc2626"),
        ("reliability_after", f"calibrated (ECE {result['ece_after']:.3f})", "#2563eb"),
    ):
        points = result[key]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share of fields right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("field confidence: reliability", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
