"""docs/s of one model at each deployable precision, side by side in one run (fp32, bf16, int8 on CPU).

    .venv/bin/python benchmarks/precision.py --model MODEL_FOLDER --n 8 --threads 1

Random scans from ``donut-hole synth``; every variant reads the same images, batch by batch, generating
exactly ``--tokens`` tokens (EOS suppressed) so that speed, not what the model happens to say, is compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import ModelLoadError
from donut_hole.model.predict import PRECISIONS, DonutReader


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(["shipping_label"], n=args.n, out=Path(tmp) / "d", seed=11, progress=False)
        paths = [s.image_path for s in read_dataset(data)]
        print(
            f"| precision | docs/s | × fp32 |  ({args.model}, {args.n} scans, batch {args.batch_size}, "
            f"{args.tokens} tokens, {args.threads} thread(s), {args.device})"
        )
        print("|---|---:|---:|")
        base = None
        for precision in PRECISIONS:
            try:
                reader = DonutReader.from_path(
                    args.model, device=args.device, precision=precision, max_new_tokens=args.tokens
                )
            except ModelLoadError as exc:
                print(f"| {precision} | – | skipped: {exc} |")
                continue
            reader.model.generation_config.min_new_tokens = args.tokens  # exactly --tokens per document
            images = [reader.load(p) for p in paths]
            reader.predict(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
            t0 = time.perf_counter()
            reader.predict(images, batch_size=args.batch_size)
            rate = len(images) / (time.perf_counter() - t0)
            base = base or rate
            print(f"| {precision} | {rate:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
