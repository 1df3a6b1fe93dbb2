"""docs/s of one model at each deployable precision, side by side in one run (fp32, bf16, int8 on CPU).

    .venv/bin/python benchmarks/precision.py --model MODEL_FOLDER --n 8 --threads 1
    .venv/bin/python benchmarks/precision.py --model MODEL_FOLDER --data HELD_OUT --eval-n 100

Random scans from ``donut-hole synth``; every variant reads the same images, batch by batch, generating
exactly ``--tokens`` tokens (EOS suppressed) so that speed, not what the model happens to say, is compared.
With ``--data`` (a folder in DONUT's dataset format) each precision also reads the first ``--eval-n``
documents there as the product does (up to EOS) and reports field F1 and nTED accuracy on the same set.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.evaluation.evaluate import evaluate_reader
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
    parser.add_argument("--data", type=Path, help="Held-out set: also report field F1 and nTED accuracy.")
    parser.add_argument("--eval-n", type=int, default=100, help="Documents of --data read per precision.")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="Token limit when reading --data.")
    args = parser.parse_args()
    held_out = read_dataset(args.data)[: args.eval_n] if args.data else []
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(["shipping_label"], n=args.n, out=Path(tmp) / "d", seed=11, progress=False)
        paths = [s.image_path for s in read_dataset(data)]
        accuracy = f" field F1 | nTED acc | ({len(held_out)} held-out documents)" if held_out else ""
        print(
            f"| precision | docs/s | × fp32 |{accuracy}  ({args.model}, {args.n} scans, batch "
            f"{args.batch_size}, {args.tokens} tokens, {args.threads} thread(s), {args.device})"
        )
        print("|---|---:|---:|" + ("---:|---:|" if held_out else ""))
        base = None
        for precision in PRECISIONS:
            try:
                reader = DonutReader.from_path(
                    args.model, device=args.device, precision=precision, max_new_tokens=args.max_new_tokens
                )
            except ModelLoadError as exc:
                print(f"| {precision} | – | skipped: {exc} |")
                continue
            max_tokens = reader.max_new_tokens
            reader.max_new_tokens = args.tokens
            reader.model.generation_config.min_new_tokens = args.tokens  # exactly --tokens per document
            images = [reader.load(p) for p in paths]
            reader.predict(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
            t0 = time.perf_counter()
            reader.predict(images, batch_size=args.batch_size)
            rate = len(images) / (time.perf_counter() - t0)
            base = base or rate
            scores = ""
            if held_out:
                reader.model.generation_config.min_new_tokens = None
                reader.max_new_tokens = max_tokens
                result = evaluate_reader(reader, held_out, batch_size=args.batch_size, progress=False).result
                scores = f" {result.f1:.4f} | {result.ted_accuracy:.4f} |"
            print(f"| {precision} | {rate:.2f} | {rate / base:.2f} |{scores}")


if __name__ == "__main__":
    main()
