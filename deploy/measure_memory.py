"""Measure the resident memory of a worker-like process: the numbers behind the k8s resource requests.

A worker process imports the service stack, builds (or loads) one DONUT, and runs batched prediction.
This script does the same with a randomly initialised preset and prints one JSON line::

    .venv/bin/python deploy/measure_memory.py --preset tiny
    .venv/bin/python deploy/measure_memory.py --preset donut-base --max-new-tokens 16 --threads 1
    .venv/bin/python deploy/measure_memory.py --model models/donut-hole-small    # a saved checkpoint
    .venv/bin/python deploy/measure_memory.py --preset donut-base --recipe configs/donut-base.yaml \
        --image-size 1280 960 --batch-size 1 --max-new-tokens 16    # the recipe's student, at 1280x960

RSS is read from /proc/self/status (VmRSS, Linux); the peak is ``ru_maxrss``. Random weights decode up
to ``--max-new-tokens`` tokens, so the generate part of the peak is an upper bound for short documents.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def rss_mib() -> float:
    """Current resident set size of this process, in MiB (VmRSS from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def peak_rss_mib() -> float:
    """Highest resident set size this process reached, in MiB (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "donut-base"])
    parser.add_argument("--model", type=Path, help="Load this checkpoint folder instead of a preset.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--recipe",
        type=Path,
        help="Measure this compress recipe's student of the preset (layers and FFN cut).",
    )
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="Read images of this size instead."
    )
    args = parser.parse_args()

    out: dict[str, object] = {"model": str(args.model or args.preset), "batch_size": args.batch_size}
    out["rss_start_mib"] = round(rss_mib(), 1)

    # What a worker process imports before it touches the model.
    import boto3  # noqa: F401
    import celery  # noqa: F401
    import sqlalchemy  # noqa: F401
    import torch
    from PIL import Image

    from donut_hole.model.build import count_parameters, new_model
    from donut_hole.model.predict import DonutReader

    torch.set_num_threads(args.threads)
    out["rss_after_imports_mib"] = round(rss_mib(), 1)

    if args.model:
        reader = DonutReader.from_path(args.model, max_new_tokens=args.max_new_tokens)
    else:
        model, processor = new_model(args.preset, documents=[{"a": "1"}])
        if args.recipe:
            import gc

            from donut_hole.compression.recipe import CompressRecipe, load_recipe
            from donut_hole.compression.student import build_student

            model = build_student(model, load_recipe(args.recipe, CompressRecipe)).model
            gc.collect()  # the teacher is gone: only the student's weights stay resident
        reader = DonutReader(model, processor, max_new_tokens=args.max_new_tokens)
    if args.image_size:
        from donut_hole.compression.student import student_processor

        reader = DonutReader(
            reader.model,
            student_processor(reader.processor, args.image_size),
            max_new_tokens=args.max_new_tokens,
        )
        out["image_size"] = args.image_size
    if args.recipe:
        out["recipe"] = str(args.recipe)
    params = count_parameters(reader.model)
    out["params"] = params
    out["weights_fp32_mib"] = round(params * 4 / 2**20, 1)
    out["rss_after_model_mib"] = round(rss_mib(), 1)

    height, width = reader.image_size
    images = [Image.new("RGB", (width, height), "white") for _ in range(args.batch_size)]
    t0 = time.perf_counter()
    reader.predict_detailed(images, batch_size=args.batch_size)
    out["predict_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_predict_mib"] = round(rss_mib(), 1)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
