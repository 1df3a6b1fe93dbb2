"""Baseline: a shipped model read the stock way, exported by optimum-onnx and run by ONNX Runtime.

What a user would do without donut-hole: export the model with Hugging Face optimum, load it as an
``ORTModelForVision2Seq`` and read pages with ``DonutProcessor`` and ``generate`` (greedy, KV cache). It
prints and writes milliseconds per page (wall time of a pass over the pages: JPEG decoding, preprocessing,
generation, detokenising) and the sequence read from each page, to compare with ``donut-hole predict``.

It runs in its own virtual environment (optimum-onnx needs transformers 4.x; the project has 5.x), outside
the work tree, and imports nothing from ``donut_hole``::

    python3 -m venv /work/venv-optimum
    /work/venv-optimum/bin/pip install torch==2.13.0            # the project's CPU torch, not another one
    /work/venv-optimum/bin/pip install "transformers==4.57.*" "optimum-onnx[onnxruntime]" onnxruntime \\
        pillow numpy                                            # must leave torch 2.13.0 in place
    /work/venv-optimum/bin/python benchmarks/onnx_runtime.py --model models/teacher-small \\
        --pages runs/val-pages --n 16 --batch 4 --threads 1 --max-new-tokens 512 --repeats 2 \\
        --task-prompt '<s_logistics>' --export-dir /tmp/onnx-export --json OUT.json

(with transformers 4.57.6, optimum 2.1.0, optimum-onnx 0.1.0, onnxruntime 1.32.0). The pages are a DONUT
dataset folder (``donut-hole synth --kind all --n 500 --seed 1000 --out runs/val-pages``); the first ``--n``
``*.jpg`` files by name are read.

The first run for a model exports it to ``<export-dir>/<model name>/onnx`` (``optimum-cli export onnx
--task image-to-text-with-past`` in a child process, under ``nice -n <--export-niceness>``), from a copy
of the model folder in ``<export-dir>/<model name>/src`` with two fixes that transformers 4.57 needs, as
the models are saved by transformers 5:

- ``tokenizer_config.json``: ``tokenizer_class`` is ``TokenizersBackend`` (unknown to 4.57: ``DonutProcessor``
  fails to load) and becomes ``PreTrainedTokenizerFast``, which reads the same ``tokenizer.json``
  (``XLMRobertaTokenizerFast`` would add a ``<mask>`` token past the end of the vocabulary); the added
  tokens' list ``extra_special_tokens`` (a mapping in 4.57, where the list fails) becomes
  ``additional_special_tokens``; and the loading flags saved with it are dropped.
- ``config.json``: the mBART decoder keeps mBART's defaults for its unused encoder side
  (``encoder_attention_heads`` 16, ``encoder_layers``, ``encoder_ffn_dim``), and the exporter sizes the
  cross-attention cache by them; they are set to the decoder's own values.

The export is redone when the model's files change (their digests are kept in ``export.json`` beside the
ONNX files). The encoder's graph is traced at the model's image size (fine: the processor always pads to it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnxruntime
import torch
from optimum.onnxruntime import ORTModelForVision2Seq
from PIL import Image
from transformers import DonutProcessor

TASK = "image-to-text-with-past"
STOCK_TOKENIZER = "PreTrainedTokenizerFast"
# files whose change calls for a new export
SOURCE_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)
ONNX_FILES = ("encoder_model.onnx", "decoder_model_merged.onnx")
# saved by transformers 5 with the tokenizer, taken by 4.57 as arguments of the tokenizer itself
TOKENIZER_LOADING_FLAGS = ("backend", "is_local", "local_files_only")


def source_digests(model_dir: Path) -> dict[str, str]:
    """SHA-256 of each of the model's files that the export depends on."""
    return {
        name: hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        for name in SOURCE_FILES
        if (model_dir / name).is_file()
    }


def patch_for_transformers4(src: Path) -> None:
    """Make a copy of a model folder saved by transformers 5 loadable and exportable by transformers 4.57."""
    path = src / "tokenizer_config.json"
    tokenizer = json.loads(path.read_text())
    if tokenizer.get("tokenizer_class") == "TokenizersBackend":
        tokenizer["tokenizer_class"] = STOCK_TOKENIZER
    extra = tokenizer.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        known = tokenizer.get("additional_special_tokens") or []
        tokenizer["additional_special_tokens"] = known + [token for token in extra if token not in known]
    elif extra is not None:
        tokenizer["extra_special_tokens"] = extra
    for flag in TOKENIZER_LOADING_FLAGS:
        tokenizer.pop(flag, None)
    path.write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n")

    path = src / "config.json"
    config = json.loads(path.read_text())
    decoder = config["decoder"]
    for side in ("attention_heads", "layers", "ffn_dim"):
        if f"decoder_{side}" in decoder:
            decoder[f"encoder_{side}"] = decoder[f"decoder_{side}"]
    path.write_text(json.dumps(config, indent=2) + "\n")


def ensure_export(model_dir: Path, export_dir: Path, niceness: int) -> Path:
    """The ONNX folder of ``model_dir`` under ``export_dir``, exported first if missing or stale."""
    root = export_dir / model_dir.resolve().name
    onnx_dir, src, stamp = root / "onnx", root / "src", root / "onnx" / "export.json"
    digests = source_digests(model_dir)
    exported = stamp.is_file() and all((onnx_dir / name).is_file() for name in ONNX_FILES)
    if exported and json.loads(stamp.read_text()).get("source_sha256") == digests:
        return onnx_dir
    print(f"exporting {model_dir} to {onnx_dir} (nice {niceness}) ...", file=sys.stderr, flush=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(model_dir, src)
    patch_for_transformers4(src)
    partial = root / "onnx.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cli = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--task", TASK]
    subprocess.run(["nice", "-n", str(niceness), *cli, "--model", str(src), str(partial)], check=True)
    record = {
        "source": str(model_dir.resolve()),
        "source_sha256": digests,
        "task": TASK,
        "optimum": version("optimum"),
        "optimum-onnx": version("optimum-onnx"),
        "transformers": version("transformers"),
        "torch": version("torch"),
    }
    (partial / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(onnx_dir, ignore_errors=True)
    partial.rename(onnx_dir)
    return onnx_dir


def load(onnx_dir: Path, threads: int) -> tuple[ORTModelForVision2Seq, Any]:
    """The ONNX Runtime model (CPU, ``threads`` intra-op threads, one inter-op thread) and its processor."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = ORTModelForVision2Seq.from_pretrained(
        onnx_dir, session_options=options, provider="CPUExecutionProvider", use_cache=True
    )
    return model, DonutProcessor.from_pretrained(onnx_dir)


class Reader:
    """Reads batches of page files: preprocessing, greedy generation, the sequences after the prompt."""

    def __init__(self, model: ORTModelForVision2Seq, processor: Any, task_prompt: str, max_new_tokens: int):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        tokenizer = processor.tokenizer
        self.prompt_id = tokenizer.convert_tokens_to_ids(task_prompt)
        if self.prompt_id is None or self.prompt_id == tokenizer.unk_token_id:
            raise SystemExit(f"task prompt {task_prompt!r} is not a token of this model")

    def read(self, pages: Sequence[Path]) -> list[str]:
        tokenizer = self.processor.tokenizer
        images = [Image.open(page).convert("RGB") for page in pages]
        pixel_values = self.processor(images=images, return_tensors="pt").pixel_values
        prompt = torch.full((len(pages), 1), self.prompt_id, dtype=torch.long)
        out = self.model.generate(
            pixel_values,
            decoder_input_ids=prompt,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bad_words_ids=[[tokenizer.unk_token_id]],
        )
        return [self.sequence(row) for row in out[:, prompt.shape[1] :].tolist()]

    def sequence(self, ids: list[int]) -> str:
        """The tokens up to the first EOS as text, special tokens kept, without EOS and padding."""
        tokenizer = self.processor.tokenizer
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        return text.replace(tokenizer.eos_token, "").replace(tokenizer.pad_token, "").strip()

    def read_all(self, pages: Sequence[Path], batch: int) -> list[str]:
        sequences: list[str] = []
        for start in range(0, len(pages), batch):
            sequences.extend(self.read(pages[start : start + batch]))
        return sequences


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (config.json, ...)")
    parser.add_argument("--pages", type=Path, required=True, help="folder of page images (*.jpg)")
    parser.add_argument("--n", type=int, default=16, help="pages: the first N *.jpg by name")
    parser.add_argument("--batch", type=int, default=4, help="pages per generate call")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and torch's)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the pages")
    parser.add_argument("--task-prompt", default="<s_logistics>")
    parser.add_argument("--export-dir", type=Path, default=Path("/tmp/onnx-export"))
    parser.add_argument("--export-niceness", type=int, default=19, help="nice increment of the export")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if min(args.n, args.batch, args.threads, args.repeats, args.max_new_tokens) < 1:
        parser.error("--n, --batch, --threads, --repeats and --max-new-tokens must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pages = sorted(args.pages.glob("*.jpg"))[: args.n]
    if not pages:
        raise SystemExit(f"no *.jpg pages in {args.pages}")
    onnx_dir = ensure_export(args.model, args.export_dir, args.export_niceness)
    torch.set_num_threads(args.threads)  # generate's own tensor work (logits processors, argmax)
    model, processor = load(onnx_dir, args.threads)
    reader = Reader(model, processor, args.task_prompt, args.max_new_tokens)

    reader.read(pages[: args.batch])  # warm-up
    runs_ms: list[float] = []
    sequences: list[str] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sequences = reader.read_all(pages, args.batch)
        runs_ms.append(1000 * (time.perf_counter() - t0) / len(pages))
    result = {
        "model": str(args.model),
        "onnx_dir": str(onnx_dir),
        "pages": [str(page) for page in pages],
        "ms_per_page": statistics.median(runs_ms),
        "runs_ms_per_page": runs_ms,
        "sequences": sequences,
        "onnxruntime": onnxruntime.__version__,
        "transformers": version("transformers"),
        "optimum": version("optimum"),
        "optimum_onnx": version("optimum-onnx"),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "n": len(pages),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "task_prompt": args.task_prompt,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    runs = ", ".join(f"{ms:.1f}" for ms in runs_ms)
    print(
        f"{args.model}: {result['ms_per_page']:.1f} ms/page (median of {runs}) over {len(pages)} pages, "
        f"batch {args.batch}, {args.threads} thread(s), onnxruntime {result['onnxruntime']}, "
        f"optimum-onnx {result['optimum_onnx']}, transformers {result['transformers']}"
    )
    return result


if __name__ == "__main__":
    main()
