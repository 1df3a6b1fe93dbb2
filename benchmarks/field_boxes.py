"""Where each field was read, against where the generator printed it: IoU of field boxes on held-out scans.

    .venv/bin/python benchmarks/field_boxes.py --n 200 [--model models/donut-hole-small] [--picture out.png]

Renders samples 0..n-1 of ``donut-hole synth --kind all --seed 1000`` again (the held-out set: the same
pixels, and the generator's record of each printed field's box), reads each with the model locating its
fields, and pairs every read field with the printed field of its key path. Prints the share of read fields
whose box has IoU >= 0.5 with the truth, per document kind and in all; ``--picture`` draws one page with
both boxes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import ImageDraw

from donut_hole.documents.schemas import DOCUMENT_TYPES
from donut_hole.documents.synth import jpeg_round_trip, render_sample
from donut_hole.evaluation.boxes import field_ious, summary, truth_boxes
from donut_hole.model import locate
from donut_hole.model.predict import DonutReader
from donut_hole.model.readings import field_readings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/donut-hole-small"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--picture", type=Path, default=None, help="Draw sample 2's boxes into this PNG.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reader = DonutReader.from_path(args.model)
    reader.locate = True
    kinds = sorted(DOCUMENT_TYPES)
    per_kind: dict[str, list[float | None]] = {kind: [] for kind in kinds}
    for index in range(args.n):
        kind = kinds[index % len(kinds)]
        image = jpeg_round_trip(render_sample(kind, seed=args.seed, index=index))
        (prediction,) = reader.predict_detailed([image])
        geometry = locate.input_geometry(reader.processor.image_processor, image.size)
        fields = field_readings(
            prediction, reader.processor.tokenizer, calibration=reader.calibration, geometry=geometry,
            stride=reader.stride,
        )  # fmt: skip
        _, truth = truth_boxes(kind, seed=args.seed, index=index)
        per_kind[kind] += field_ious(fields, truth)
        if args.picture is not None and index == 2:
            _draw(image, fields, truth, args.picture)
    result = {kind: summary(ious) for kind, ious in per_kind.items()}
    result["all"] = summary([v for ious in per_kind.values() for v in ious])
    print(json.dumps({"model": str(args.model), "n": args.n, "seed": args.seed, **result}, indent=1))


def _draw(image, fields, truth, out: Path) -> None:  # type: ignore[no-untyped-def]
    page = image.convert("RGB").resize((image.width * 2, image.height * 2))
    draw = ImageDraw.Draw(page)
    w, h = page.size
    for _, box in truth:
        draw.rectangle([box[0] * w, box[1] * h, box[2] * w, box[3] * h], outline=(22, 163, 74), width=2)
    for f in fields:
        if f.box is not None:
            color = (37, 99, 235) if f.confidence >= 0.5 else (220, 38, 38)
            draw.rectangle([f.box[0] * w, f.box[1] * h, f.box[2] * w, f.box[3] * h], outline=color, width=2)
    page.save(out)


if __name__ == "__main__":
    main()
