"""The reader's own decoding step against the decoder's forward, side by side, and a token's cost per layer.

    .venv/bin/python benchmarks/decoding.py --pages runs/fast/val-pages            # 1 thread
    .venv/bin/python benchmarks/decoding.py --pages runs/fast/val-pages --threads 2

Part 1: milliseconds per page of each model (whole reading: preprocessing, encoder, greedy decoding) with
``donut_hole.model.decoding`` and with the decoder's forward at every token, at batch 1 and 4, the two
orders alternated. Part 2: the encoder's milliseconds and the decoding step's milliseconds per token, at
each of ``--batches`` (default 1), for the teacher and for students of one and two decoder layers derived
by the fast recipe (untrained: the cost depends on the shape only), and what a page of ``--tokens`` costs
each, so the teacher / student ratio at that batch size. Pause a training run on the same cores while this
runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from donut_hole.compression.recipe import CompressRecipe, load_recipe
from donut_hole.compression.student import build_student
from donut_hole.model import decoding
from donut_hole.model.build import load_model
from donut_hole.model.predict import DonutReader, describe_cpu


def per_page(models: list[str], pages: list[Path]) -> None:
    real = decoding.supports
    for name in models:
        reader = DonutReader.from_path(name)
        images = [reader.load(page) for page in pages]
        reader.predict_detailed(images[:1], batch_size=1)  # warm-up
        for batch in (1, 4):
            ms: dict[str, list[float]] = {"step": [], "forward": []}
            for repeat in range(2):
                for way in ("step", "forward") if repeat % 2 == 0 else ("forward", "step"):
                    decoding.supports = real if way == "step" else (lambda decoder: False)
                    t0 = time.perf_counter()
                    reader.predict_detailed(images, batch_size=batch)
                    ms[way].append(1000 * (time.perf_counter() - t0) / len(images))
            decoding.supports = real
            step, forward = statistics.median(ms["step"]), statistics.median(ms["forward"])
            speedup = forward / step
            print(f"{name} batch {batch}: step {step:.0f} ms/page, forward {forward:.0f}, x{speedup:.2f}")


def per_token(teacher_path: str, recipe_path: str, tokens: int, batches: list[int]) -> None:
    teacher, _ = load_model(teacher_path)
    recipe = load_recipe(recipe_path, CompressRecipe)
    two = recipe.model_copy(deep=True)
    two.student.decoder_layers = 2
    models = {
        "teacher": teacher.eval(),
        "one decoder layer": build_student(teacher, recipe).model.eval(),
        "two decoder layers": build_student(teacher, two).model.eval(),
    }
    height, width = teacher.config.encoder.image_size  # type: ignore[union-attr]  # a DONUT's encoder config
    page_ms: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for batch in batches:
            pixels = torch.rand(batch, 3, height, width)
            for name, model in models.items():
                encode, token = [], []
                hidden = model.encoder(pixel_values=pixels)[0]  # warm-up: this batch shape's first call
                for _ in range(5):
                    t0 = time.perf_counter()
                    hidden = model.encoder(pixel_values=pixels)[0]
                    encode.append(time.perf_counter() - t0)
                for _ in range(3):
                    steps, ids = decoding.MBartSteps(model.decoder, hidden), torch.full((batch, 1), 5)
                    t0 = time.perf_counter()
                    for _ in range(tokens):
                        ids = steps.step(ids).argmax(-1, keepdim=True)
                    token.append((time.perf_counter() - t0) / tokens)
                encoder_ms, token_ms = 1000 * statistics.median(encode), 1000 * statistics.median(token)
                page_ms[name, batch] = (encoder_ms + tokens * token_ms) / batch
                print(
                    f"{name}, batch {batch}: encoder {encoder_ms:.0f} ms, {token_ms:.3f} ms per token step, "
                    f"{page_ms[name, batch]:.0f} ms per page of {tokens} tokens"
                )
    for batch in batches:
        teacher_ms = page_ms["teacher", batch]
        ratios = ", ".join(
            f"{name} {teacher_ms / page_ms[name, batch]:.2f}x" for name in models if name != "teacher"
        )
        print(f"batch {batch}, a page without preprocessing, teacher / student: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=Path, required=True, help="a folder of held-out page images")
    parser.add_argument("--n", type=int, default=8, help="pages read in part 1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["models/teacher-small", "models/donut-hole-small"])
    parser.add_argument("--recipe", default="configs/donut-hole-cpu-fast.yaml")
    parser.add_argument("--tokens", type=int, default=200, help="decoding steps timed in part 2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes of part 2")
    parser.add_argument("--skip-pages", action="store_true", help="part 2 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{describe_cpu()}, {args.threads} threads")
    pages = sorted(p for p in args.pages.iterdir() if p.suffix in {".jpg", ".png"})[: args.n]
    if not args.skip_pages:
        per_page(args.models, pages)
    per_token(args.models[0], args.recipe, args.tokens, args.batches)


if __name__ == "__main__":
    main()
