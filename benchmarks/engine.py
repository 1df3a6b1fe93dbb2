"""Where a page's time goes against this CPU's limits, and the reader side by side with what a user would
pick instead: stock transformers ``generate``, optimum-onnx + ONNX Runtime, and the reader before the
decoding engine.

    .venv/bin/python benchmarks/engine.py --pages runs/val-pages                       # about 6 minutes
    .venv/bin/python benchmarks/engine.py --optimum-python /work/venv-optimum/bin/python   # + optimum/ORT

(``runs/val-pages``: ``donut-hole synth --kind all --n 500 --seed 1000 --out runs/val-pages``, the held-out
scans in their own page shapes; the first ``--n`` are read.) One thread (``--threads``); pause a training
run on the same cores while this runs. Writes ``benchmarks/results/engine-cpu.md`` (and ``.json``).

Part 1, the machine: a large float32 and bfloat16 matrix product (GFLOP/s) and reading a large and a
cache-sized array (GB/s), the peaks the parts below are compared with.

Part 2, one page split: preprocessing, the encoder (one page per pass), and the decoding step per
page-token at 1, 4 and 8 pages a step, split into self-attention, cross-attention and feed-forward (each
measured by leaving it out of the native step) and the rest (embedding, head, Python); with the FLOPs and
bytes each reads, so the GFLOP/s and GB/s achieved.

Part 3, side by side on the same pages at ``--batch`` pages (the worker's batch size), each read to EOS:
milliseconds per page (median of ``--repeats`` rounds, the order alternated) and how many pages' fields
equal stock ``generate``'s. ``optimum/ORT`` runs ``benchmarks/onnx_runtime.py`` in its own virtual
environment (transformers 4.57, as a user sets it up; see that script) on the same pages, between rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from donut_hole.model import decoding, engine, kernels
from donut_hole.model.predict import DonutReader, describe_cpu

RESULTS = Path(__file__).parent / "results"


def _best(f: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of ``f`` after one warm-up call."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict[str, float]:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    flops = 2 * 2048**3
    big, small = torch.randn(64 << 20 >> 2), torch.randn(8 << 20 >> 2)  # 64 MB and 8 MB of float32
    return {
        "fp32_gflops": flops / _best(lambda: a @ b) / 1e9,
        "bf16_gflops": flops / _best(lambda: a.bfloat16() @ b.bfloat16()) / 1e9,
        "read_gbs": big.nbytes / _best(big.sum, 9) / 1e9,
        "read_8mb_gbs": small.nbytes / _best(small.sum, 51) / 1e9,
    }


def _step_flops_bytes(w: engine.DecoderWeights, cells: int, length: int) -> tuple[float, float, float]:
    """FLOPs of one page-token's step (self-attention at ``length`` keys), and bytes of the page's cells and
    of the decoder's weights it reads."""
    c, f, layers = w.width, w.ffn, len(w.layers)
    linear = 2 * (3 * c * c + c * c + c * c + c * c + 2 * c * f)  # qkv, out, cross q, cross out, FFN
    attention = 2 * 2 * c * (length + cells)  # scores and values, self and cross
    head = 2 * c * w.head[0].shape[0]
    cell_bytes = layers * 2 * cells * c * 4
    pairs = [
        (layer.qkv, layer.out, layer.cross_q, layer.cross_out, layer.fc1, layer.fc2) for layer in w.layers
    ]
    weight_bytes = sum(t.nbytes for layer in pairs for pair in layer for t in pair if t is not None)
    return layers * (linear + attention) + head, cell_bytes, weight_bytes


def split(reader: DonutReader, images: list[Any], tokens: int) -> dict[str, Any]:
    """Part 2 for ``reader``: preprocessing, encoder, and the step per page-token at 1, 4 and 8 pages."""
    out: dict[str, Any] = {}
    out["preprocess_ms"] = 1000 * _best(lambda: reader.pixel_values([images[0]]))
    pixels = reader.pixel_values([images[0]])
    with torch.inference_mode():
        out["encoder_ms"] = 1000 * _best(lambda: reader._encode(pixels))
        with FlopCounterMode(display=False) as counter:
            cells = reader._encode(pixels)
    out["encoder_gflops"] = counter.get_total_flops() / (out["encoder_ms"] / 1000) / 1e9
    weights = engine.DecoderWeights(reader.model.decoder)
    flops, cell_bytes, weight_bytes = _step_flops_bytes(weights, cells.shape[1], tokens // 2)
    out["cells"] = int(cells.shape[1])
    out["steps"] = {}
    for rows in (1, 4, 8):
        times = {}
        for skip in (0, 1, 2, 4, 7):
            batch = engine._Batch(weights, rows)
            for _ in range(rows):
                batch.admit(cells)
            batch.skip = skip
            ids = torch.full((rows,), 5)
            with torch.inference_mode():
                for _ in range(tokens // 2):  # to the middle of a page's length
                    ids = batch.step(ids).argmax(-1)
                t0 = time.perf_counter()
                for _ in range(40):
                    ids = batch.step(ids).argmax(-1)
            times[skip] = (time.perf_counter() - t0) / 40 / rows * 1000  # ms per page-token
        step = times[0]
        out["steps"][rows] = {
            "ms_per_page_token": step,
            "self_attention_ms": step - times[1],
            "cross_attention_ms": step - times[2],
            "ffn_ms": step - times[4],
            "rest_ms": times[7],
            "gflops": flops / (step / 1000) / 1e9,
            "cells_gbs": cell_bytes / ((step - times[2]) / 1000) / 1e9 if step > times[2] else float("nan"),
            "read_gbs": (cell_bytes + weight_bytes / rows) / (step / 1000) / 1e9,
        }
    return out


def _stock(reader: DonutReader, images: list[Any], batch: int) -> list[dict[str, Any]]:
    """transformers' greedy ``generate`` as a user calls it, in batches of ``batch``."""
    from donut_hole.model.tokens import token2json

    tokenizer = reader.processor.tokenizer
    start = tokenizer.convert_tokens_to_ids(reader.task_token)
    out = []
    for first in range(0, len(images), batch):
        pixels = reader.pixel_values(images[first : first + batch])
        with torch.inference_mode():
            ids = reader.model.generate(
                pixel_values=pixels,
                decoder_input_ids=torch.full((pixels.shape[0], 1), start),
                max_new_tokens=reader.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bad_words_ids=[[tokenizer.unk_token_id]],
            )
        for row in tokenizer.batch_decode(ids[:, 1:]):
            text = row.split(tokenizer.eos_token)[0].replace(tokenizer.pad_token, "").strip()
            out.append(token2json(text))
    return out


def _previous(reader: DonutReader, images: list[Any], batch: int) -> list[dict[str, Any]]:
    """The reader before the engine: its own decoding step (``decoding.MBartSteps``), batch by batch."""
    supports = engine.supports
    engine.supports = lambda decoder: False  # type: ignore[assignment]
    try:
        assert decoding.supports(reader.model.decoder)
        return [p.data for p in reader.predict_detailed(images, batch_size=batch)]
    finally:
        engine.supports = supports  # type: ignore[assignment]


def _without_native_kernel(reader: DonutReader) -> None:
    """The engine's steps in PyTorch for this reader, as where no C compiler is found."""
    reader._weights = engine.DecoderWeights(reader.model.decoder)
    reader._weights.native = None
    reader._weights_version = tuple((p.data_ptr(), p._version) for p in reader.model.decoder.parameters())


def _optimum(python: str, model: str, pages: Path, n: int, batch: int, threads: int, tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "ort.json"
        subprocess.run(
            [
                python, str(Path(__file__).with_name("onnx_runtime.py")), "--model", model,
                "--pages", str(pages), "--n", str(n), "--batch", str(batch), "--threads", str(threads),
                "--max-new-tokens", str(tokens), "--repeats", "1", "--json", str(out),
            ],
            check=True,
        )  # fmt: skip
        return json.loads(out.read_text())


def side_by_side(args: argparse.Namespace, paths: list[Path]) -> dict[str, Any]:
    fp32 = DonutReader.from_path(args.model, max_new_tokens=args.max_new_tokens)
    bf16 = DonutReader.from_path(args.model, max_new_tokens=args.max_new_tokens, precision="bf16")
    torch_steps = DonutReader.from_path(args.model, max_new_tokens=args.max_new_tokens)
    _without_native_kernel(torch_steps)
    images = [fp32.load(path) for path in paths]
    ways: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "stock generate": lambda: _stock(fp32, images, args.batch),
        "previous reader": lambda: _previous(fp32, images, args.batch),
        "engine fp32": lambda: [p.data for p in fp32.predict_detailed(images, batch_size=args.batch)],
        "engine fp32, PyTorch steps (no C compiler)": lambda: [
            p.data for p in torch_steps.predict_detailed(images, batch_size=args.batch)
        ],
        "engine bf16": lambda: [p.data for p in bf16.predict_detailed(images, batch_size=args.batch)],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    fields: dict[str, list[dict[str, Any]]] = {}
    for way in ways.values():  # warm-up
        way() if way is not ways["stock generate"] else None
    ort: list[dict] = []
    for round_ in range(args.repeats):
        order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
        for name in order:
            t0 = time.perf_counter()
            fields[name] = ways[name]()
            times[name].append(1000 * (time.perf_counter() - t0) / len(images))
        if args.optimum_python:
            ort.append(_optimum(args.optimum_python, args.model, args.pages, len(images), args.batch,
                                args.threads, args.max_new_tokens))  # fmt: skip
    stock = fields["stock generate"]
    rows = {
        name: {
            "ms_per_page": statistics.median(times[name]),
            "runs": times[name],
            "same_fields": sum(a == b for a, b in zip(fields[name], stock, strict=True)),
        }
        for name in ways
    }
    if ort:
        from donut_hole.model.tokens import token2json

        rows["optimum/ORT"] = {
            "ms_per_page": statistics.median([run["ms_per_page"] for run in ort]),
            "runs": [run["ms_per_page"] for run in ort],
            "same_fields": sum(
                token2json(sequence) == theirs
                for sequence, theirs in zip(ort[-1]["sequences"], stock, strict=True)
            ),
            "versions": {k: ort[-1].get(k) for k in ("onnxruntime", "transformers", "optimum")},
        }
    return rows


def _table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["split"]
    lines = [
        "# Where a page's time goes, and the reader side by side",
        "",
        f"`{result['command']}`",
        "",
        f"{result['cpu']}, torch {result['torch']}, {result['threads']} thread(s), {result['date']}; "
        f"native kernel: {'yes' if result['native'] else 'no'}. Model `{result['model']}`: {s['cells']} "
        f"encoder cells per page, {result['tokens_per_page']:.0f} tokens per page on average (to EOS).",
        "",
        "## This CPU's peaks (one thread)",
        "",
        "| float32 matmul | bfloat16 matmul | read 64 MB | read 8 MB (cache) |",
        "| ---: | ---: | ---: | ---: |",
        f"| {m['fp32_gflops']:.0f} GFLOP/s | {m['bf16_gflops']:.0f} GFLOP/s | {m['read_gbs']:.0f} GB/s | "
        f"{m['read_8mb_gbs']:.0f} GB/s |",
        "",
        "## One page, split (fp32)",
        "",
        f"Preprocessing {s['preprocess_ms']:.1f} ms; encoder {s['encoder_ms']:.1f} ms "
        f"({s['encoder_gflops']:.0f} GFLOP/s); decoding: below, per page and token.",
        "",
        "| pages per step | ms per page-token | self-attention | cross-attention | feed-forward | rest "
        "(embedding, head, Python) | GFLOP/s | cells GB/s (cross-attention) | GB/s (cells + weights) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows, step in s["steps"].items():
        lines.append(
            f"| {rows} | {step['ms_per_page_token']:.3f} | {step['self_attention_ms']:.3f} | "
            f"{step['cross_attention_ms']:.3f} | {step['ffn_ms']:.3f} | {step['rest_ms']:.3f} | "
            f"{step['gflops']:.1f} | {step['cells_gbs']:.0f} | {step['read_gbs']:.0f} |"
        )
    stock = result["side_by_side"]["stock generate"]["ms_per_page"]
    n = result["pages"]
    lines += [
        "",
        f"## Side by side: {n} pages, {result['batch']} pages a batch, read to EOS",
        "",
        "| reader | ms per page | × stock generate | pages with stock's fields |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in result["side_by_side"].items():
        speed = stock / row["ms_per_page"]
        lines.append(f"| {name} | {row['ms_per_page']:.0f} | {speed:.2f} | {row['same_fields']}/{n} |")
    lines += [
        "",
        "- Self-attention, cross-attention and feed-forward are each timed by leaving them out of the "
        "native step: a part's time is the step's minus the step's without it (noise can make a small "
        "part negative).",
        "- The engine reads a page at a time on this CPU (`CPU_CELLS_BUDGET`): at 4 pages a step the pages' "
        "cells no longer stay in the cache between steps (the rows above).",
        "- `engine bf16`: the encoder's arithmetic and the cells in bf16 (`--precision bf16`), the decoder's "
        "steps in fp32.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/teacher-small")
    parser.add_argument("--pages", type=Path, default=Path("runs/val-pages"))
    parser.add_argument("--n", type=int, default=16, help="pages read side by side (the first n)")
    parser.add_argument("--batch", type=int, default=4, help="pages a batch (the worker's batch size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--optimum-python", help="python of a venv with optimum-onnx (see onnx_runtime.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(args.pages.glob("*.jpg"))[: args.n]
    if len(paths) < args.n:
        parser.error(f"{args.pages} holds {len(paths)} scans, fewer than --n {args.n}")
    reader = DonutReader.from_path(args.model, max_new_tokens=args.max_new_tokens)
    images = [reader.load(path) for path in paths]
    tokens = [len(p.token_probs) for p in reader.predict_detailed(images, batch_size=1)]
    result: dict[str, Any] = {
        "command": "python benchmarks/engine.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
        "cpu": describe_cpu(),
        "machine_name": platform.node(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "native": kernels.native(),
        "model": args.model,
        "pages": len(paths),
        "batch": args.batch,
        "tokens_per_page": statistics.mean(tokens),
        "machine": machine(),
    }
    print(json.dumps(result["machine"]))
    result["split"] = split(reader, images, int(statistics.mean(tokens)))
    print(json.dumps(result["split"]["steps"]))
    result["side_by_side"] = side_by_side(args, paths)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    table = _table(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
