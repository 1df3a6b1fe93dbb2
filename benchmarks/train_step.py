"""Seconds per training step of a teacher recipe's model, each CPU lever side by side in one run.

    .venv/bin/python benchmarks/train_step.py                       # configs/teacher-cpu.yaml, 1 thread
    .venv/bin/python benchmarks/train_step.py --tokens 450 --compile   # also torch.compile (minutes)

One step is the forward and backward pass of the model alone (random pixels and token ids, fixed shapes) on
``--batch`` images with ``--tokens`` decoder tokens: no data loading, no optimizer. Variants: fp32 and bf16
autocast (where the CPU has bf16 arithmetic), the decoder's eager attention returning attention maps (what
the guided-attention loss needs) against SDPA returning none, and, with ``--compile``, the bf16 step under
``torch.compile``. Pause a training run on the same cores while this measures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import VisionEncoderDecoderModel

from donut_hole.compression.recipe import TeacherRecipe, load_recipe
from donut_hole.compression.teacher import teacher_preset
from donut_hole.model.build import model_config, preset_with
from donut_hole.model.predict import cpu_has_bf16


def timed(step: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of ``repeats`` calls after it)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=Path("configs/teacher-cpu.yaml"))
    parser.add_argument("--batch", type=int, default=8, help="Images per step (one process's half of 16).")
    parser.add_argument("--tokens", type=int, default=300, help="Decoder tokens per image.")
    parser.add_argument("--vocab", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="Also time the bf16 step under torch.compile.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, TeacherRecipe)
    preset = teacher_preset(recipe)
    if recipe.model.image_size is not None:  # the recipe's input size, as training builds the model
        preset = preset_with(preset, {"image_size": tuple(recipe.model.image_size)})
    config = model_config(
        preset,
        vocab_size=args.vocab,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=3,
    )
    model = VisionEncoderDecoderModel(config=config).train()
    pixels = torch.randn(args.batch, 3, *preset.image_size)
    ids = torch.randint(4, args.vocab, (args.batch, args.tokens))
    bf16 = cpu_has_bf16()

    def step_of(
        forward: Any, precision: Callable[[], AbstractContextManager[Any]], maps: bool
    ) -> Callable[[], None]:
        def step() -> None:
            with precision():
                out = forward(pixel_values=pixels, decoder_input_ids=ids, output_attentions=maps)
                loss = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), ids.flatten())
                if maps:
                    loss = loss + out.cross_attentions[-1].float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        return step

    def autocast() -> AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    variants: list[tuple[str, str, Callable[[], AbstractContextManager[Any]], bool, bool]] = [
        ("fp32, eager attention + maps", "eager", nullcontext, True, False),
    ]
    if bf16:
        variants += [
            ("bf16, eager attention + maps", "eager", autocast, True, False),
            ("bf16, SDPA, no maps", "sdpa", autocast, False, False),
        ]
        if args.compile:
            variants.append(("bf16, eager + maps, torch.compile", "eager", autocast, True, True))
    print(
        f"| variant | first step s | median step s | images/s | x fp32 |  ({args.recipe}, "
        f"{preset.image_size[0]}x{preset.image_size[1]}, batch {args.batch}, {args.tokens} tokens, "
        f"{args.threads} thread(s); "
        f"bf16 arithmetic: {'yes' if bf16 else 'no'})"
    )
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, attention, precision, maps, compiled in variants:
        model.decoder.set_attn_implementation(attention)
        forward = torch.compile(model) if compiled else model
        first, median = timed(step_of(forward, precision, maps), args.repeats)
        base = base or median
        print(
            f"| {name} | {first:.2f} | {median:.3f} | {args.batch / median:.2f} | {base / median:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
