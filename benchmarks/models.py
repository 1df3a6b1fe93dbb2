"""Teacher vs DONUT-hole students, side by side in one run: speed, memory, parameters and density.

    .venv/bin/python benchmarks/models.py --device cpu            # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/models.py --device cuda           # about 4-5 minutes on one H200
    .venv/bin/python benchmarks/models.py --quick --preset tiny   # smoke run, seconds
    .venv/bin/python benchmarks/models.py --teacher runs/default/anneal/model \
        --recipe configs/donut-hole-cpu.yaml --variants teacher,layers,structured   # a trained teacher

All variants come from one randomly initialised teacher in the published donut-base layout (random weights
are fine for speed) and run on the same DONUT-preprocessed synthetic scans. A pass is one batch: the Swin
encoder, then greedy generation with a KV cache of exactly ``--new-tokens`` tokens per document (EOS is
suppressed until then, so a random decoder does the work a trained one does). Variants are interleaved and
their order rotates every repeat, so load from other processes falls on all of them alike; medians over
repeats, after a warm-up.

Plan: each variant's warm-up pass at the cheapest configuration gives its encoder seconds per pixel and its
generation seconds per token, hence an estimate of every configuration's cost (on CUDA, each configuration's
own warm-up refines it). Configurations run cheapest first; each gets one round (one pass per variant) if it
fits in what is left of ``--budget-s`` (otherwise it is listed as not measured), more from a fair share of
what remains after reserving a round for every later configuration that fits, and what is left at the end
buys more rounds, cheapest first, up to ``--repeats``. ``--budget-s 0`` runs everything ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.students import BenchmarkError, Errors, Samples  # noqa: E402
from benchmarks.students.passes import PeakMemory  # noqa: E402
from benchmarks.students.results import (  # noqa: E402
    NOTES,
    machine_description,
    render_markdown,
    summarise,
    targets,
)
from benchmarks.students.schedule import Config, measure, warm_up  # noqa: E402
from benchmarks.students.variants import (  # noqa: E402
    VARIANTS,
    benchmark_vocabulary,
    build_variants,
    check_resolutions,
)
from donut_hole.compression.batches import target_texts  # noqa: E402
from donut_hole.compression.recipe import CompressRecipe, load_recipe  # noqa: E402
from donut_hole.compression.student import processor_size  # noqa: E402
from donut_hole.documents.synth import sample_scan  # noqa: E402
from donut_hole.model.build import PRESETS, load_model, make_processor, new_model  # noqa: E402

log = logging.getLogger("benchmarks.models")
QUICK_RESOLUTIONS = {"tiny": "320x240,256x192", "donut-base": "640x480,448x384"}
KINDS = ("shipping_label", "bill_of_lading", "delivery_note")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"2560x1920,1280x960"`` → ``[(2560, 1920), (1280, 960)]``: height x width, as DONUT's configs."""
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError as exc:
            raise BenchmarkError(f"bad resolution {item!r}: use HEIGHTxWIDTH, e.g. 2560x1920") from exc
        sizes.append((h, w))
    return sizes


def scans(n: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """``n`` seeded synthetic scans (ground truths, images), cycling through the document kinds."""
    pairs = [sample_scan(KINDS[i % len(KINDS)], random.Random(i)) for i in range(n)]
    return [gt for gt, _ in pairs], [image for _, image in pairs]


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default="donut-base", help="teacher layout")
    p.add_argument(
        "--teacher",
        type=Path,
        help="a model folder to derive the variants from instead of --preset (its layout and input size; "
        "e.g. the default teacher with --recipe configs/donut-hole-cpu.yaml)",
    )
    p.add_argument("--recipe", type=Path, help="compression recipe (default configs/<preset>.yaml)")
    p.add_argument("--resolutions", help="HEIGHTxWIDTH list (default 2560x1920,1280x960)")
    p.add_argument("--batch-sizes", help="default 1,8 on cpu; 1,8,64 on cuda")
    p.add_argument("--repeats", type=int, help="timed passes per configuration, at most (cpu 3, cuda 5)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per document (128)")
    p.add_argument("--warmup-tokens", type=int, help="tokens generated in warm-up passes (16)")
    p.add_argument("--budget-s", type=float, help="seconds for timed passes (cpu 540, cuda 200; 0: no limit)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (teacher needed)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--vocab-rows",
        type=int,
        default=16000,
        help="rows a vocabulary-pruned student keeps (recipe prune.vocabulary; default 16000)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run of this script")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/models-<device>.json)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    defaults: dict[str, Any] = {
        "resolutions": "2560x1920,1280x960",
        "batch_sizes": "1,8,64" if cuda else "1,8",
        "repeats": 5 if cuda else 3,
        "new_tokens": 128,
        "warmup_tokens": 16,
        "budget_s": 200.0 if cuda else 540.0,
    }
    if args.quick:
        defaults.update(
            resolutions=QUICK_RESOLUTIONS[args.preset],
            batch_sizes="1,2",
            repeats=1,
            new_tokens=4,
            warmup_tokens=2,
            budget_s=0.0,
        )
    if args.teacher is not None:
        if args.recipe is None:
            p.error("--teacher needs --recipe (the compression recipe its students follow)")
        del defaults["resolutions"]  # main takes the size the model was trained at, once it is loaded
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    suffix = "-quick" if args.quick else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"models-{args.device}{suffix}.json"
    args.recipe = args.recipe or ROOT / "configs" / f"{args.preset}.yaml"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    began, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda, but torch.cuda.is_available() is false")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.teacher) if args.teacher is not None else None
    if args.resolutions is None and loaded is not None:
        height, width = processor_size(loaded[1])
        args.resolutions = f"{height}x{width}"
    sizes = parse_sizes(args.resolutions)
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    names = [n.strip() for n in args.variants.split(",")]
    if "teacher" not in names or not set(names) <= set(VARIANTS):
        raise BenchmarkError(f"--variants: name teacher and any of {list(VARIANTS)}; got {names}")
    recipe = load_recipe(args.recipe, CompressRecipe)
    memory = PeakMemory(device)

    docs, images = scans(min(8, max(batch_sizes)))
    teacher, processor = loaded or new_model(args.preset, documents=docs, image_size=sizes[0])
    shared = check_resolutions(teacher, sizes)
    log.info("building %s on %s", names, device)
    vocabulary = None
    if recipe.prune.vocabulary:
        total = int(teacher.config.decoder.vocab_size)  # type: ignore[union-attr]  # a DONUT's decoder config
        corpus = target_texts(docs, teacher, processor)
        kept, used = benchmark_vocabulary(processor.tokenizer, corpus, rows=args.vocab_rows, total=total)
        note = (
            f"vocabulary: {len(kept)} of {total} embedding/lm_head rows kept (recipe prune.vocabulary): the "
            f"{used} tokens the scans' targets use with this benchmark's small tokenizer, filled up to "
            f"--vocab-rows {args.vocab_rows}, a stand-in for the donut-base pieces a logistics training "
            "set uses"
        )
        vocabulary = (kept, note)
    teacher = teacher.to(device)  # type: ignore[arg-type]  # .to() typed as decorated
    variants = build_variants(teacher, recipe, device=device, names=names, vocabulary=vocabulary)
    inputs = {}  # size -> (max batch, 3, H, W): the same documents for every variant
    for size in sizes:
        values = make_processor(processor.tokenizer, size).image_processor(images, return_tensors="pt")
        values = values["pixel_values"]  # (n, 3, H, W)
        if tuple(values.shape[-2:]) != size:
            raise BenchmarkError(f"preprocessing gave {tuple(values.shape[-2:])}, not {size}")
        repeat = math.ceil(max(batch_sizes) / len(values))
        inputs[size] = values.repeat(repeat, 1, 1, 1)[: max(batch_sizes)].to(device)

    configs = [Config(size, b) for size in sizes for b in batch_sizes]
    cheapest = min(configs, key=lambda c: c.pixels)
    rates = warm_up(variants, cheapest, inputs=inputs, processor=processor, args=args, memory=memory)
    active = [v for v in variants if v.model is not None]
    # a generation step costs about the same at any batch on a GPU (launch-bound), grows slower than the
    # batch on a CPU; the encoder grows with the pixels
    growth = (lambda b: 1.0) if device.type == "cuda" else math.sqrt
    estimates = {
        c.key: sum(enc * c.pixels + tok * args.new_tokens * growth(c.batch) for enc, tok in rates.values())
        for c in configs
    }
    configs.sort(key=lambda c: estimates[c.key])
    header = {
        "benchmark": "models",
        "command": "python benchmarks/models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "device": args.device,
            "preset": args.preset if args.teacher is None else None,
            "teacher": str(args.teacher) if args.teacher is not None else None,
            "recipe": str(args.recipe),
            "resolutions": [f"{h}x{w}" for h, w in sizes],
            "batch_sizes": batch_sizes,
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "warmup_tokens": args.warmup_tokens,
            "budget_s": args.budget_s,
            "warmup": "each configuration"
            if device.type == "cuda"
            else f"once per variant, at {cheapest.key}",
            "memory_method": memory.method,
            "target_density": recipe.prune.target_density,
            "vocab_rows": args.vocab_rows if recipe.prune.vocabulary else None,
        },
        "weights_shared_across_resolutions": shared,
        "variants": {
            v.name: {"status": "ok" if v.skipped is None else "skipped", "reason": v.skipped or "", **v.info}
            | {"what": VARIANTS[v.name][2]}
            for v in variants
        },
        "notes": NOTES,
    }

    def write(
        samples: Samples, errors: Errors, plan: list[dict[str, Any]], *, complete: bool
    ) -> dict[str, Any]:
        rows = summarise(active, configs, samples, errors)
        result = {
            **header,
            "complete": complete,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "description": machine_description(device),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "load_average_start": load_start,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            },
            "plan": plan,
            "results": rows,
            "targets": targets(rows, active, recipe),
            "wall_s": time.perf_counter() - began,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(render_markdown(result), encoding="utf-8")
        return result

    samples, errors, plan = measure(
        active,
        configs,
        inputs=inputs,
        processor=processor,
        estimates=estimates,
        args=args,
        memory=memory,
        progress=lambda samples, errors, plan: write(samples, errors, plan, complete=False),
    )
    result = write(samples, errors, plan, complete=True)
    print(render_markdown(result))
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return result


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
