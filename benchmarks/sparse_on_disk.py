"""How small an unstructured-sparse student can be on disk: measured file sizes, not estimates.

    .venv/bin/python benchmarks/sparse_on_disk.py [--model models/donut-hole-small] [--out FILE.md]

For each layout the weights are written to a real file and its bytes counted; every compact layout is read
back and checked equal to the dense weights:

- dense fp32 and dense bf16 safetensors (what ``save_pretrained`` writes);
- "bitmask": each tensor with zeros as a packed bitmask (one bit per weight) plus its non-zero values, the
  layout of compressed-tensors' ``sparse-bitmask`` format, in fp32 and in bf16;
- gzip -6 of the dense fp32 file (what a compressed download or git's packing would get anyway).

A measurement, not a test. Stock transformers reads the bitmask layout only with the ``compressed-tensors``
package and a ``quantization_config`` in ``config.json``; the README says what was decided.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def bitmask(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tensors with at least a quarter zeros as (shape, packed mask, non-zero values); others as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        flat = tensor.detach().to(torch.float32).flatten()
        mask = flat != 0
        if tensor.dim() < 2 or float(mask.float().mean()) > 0.75:
            out[name] = tensor.detach().to(dtype).contiguous()
            continue
        out[f"{name}.shape"] = torch.tensor(list(tensor.shape), dtype=torch.int64)
        out[f"{name}.bitmask"] = torch.from_numpy(np.packbits(mask.numpy()))
        out[f"{name}.values"] = flat[mask].to(dtype).contiguous()
    return out


def dense(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense tensors back from :func:`bitmask`."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in packed.items():
        if name.endswith((".bitmask", ".values")):
            continue
        if not name.endswith(".shape"):
            out[name] = tensor
            continue
        base = name.removesuffix(".shape")
        shape = [int(v) for v in tensor.tolist()]
        count = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(packed[f"{base}.bitmask"].numpy())[:count].astype(bool))
        values = torch.zeros(count, dtype=packed[f"{base}.values"].dtype)
        values[mask] = packed[f"{base}.values"]
        out[base] = values.reshape(shape)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/donut-hole-small"))
    parser.add_argument("--out", type=Path, default=None, help="Also write the table here (markdown).")
    args = parser.parse_args()
    state = load_file(str(args.model / "model.safetensors"))
    nonzero = sum(int((t != 0).sum()) for t in state.values())
    total = sum(t.numel() for t in state.values())
    rows: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        layouts = {
            "dense fp32": {k: v.to(torch.float32).contiguous() for k, v in state.items()},
            "dense bf16": {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
            "bitmask fp32": bitmask(state, torch.float32),
            "bitmask bf16": bitmask(state, torch.bfloat16),
        }
        for name, tensors in layouts.items():
            path = folder / f"{name.replace(' ', '-')}.safetensors"
            save_file(tensors, str(path))
            rows.append((name, path.stat().st_size))
            back = dense(load_file(str(path)))
            for key, tensor in state.items():
                want = tensor.to(back[key].dtype)
                assert torch.equal(back[key], want), f"{name}: {key} does not read back"
        fp32 = (folder / "dense-fp32.safetensors").read_bytes()
        rows.append(("gzip -6 of dense fp32", len(gzip.compress(fp32, compresslevel=6))))
    base = rows[0][1]
    lines = [
        f"`{args.model}`: {total:,} weights, {nonzero:,} non-zero ({nonzero / total:.3f} of all).",
        "",
        "| layout | bytes | vs dense fp32 |",
        "|---|---:|---:|",
        *[f"| {name} | {size:,} | {size / base:.3f} |" for name, size in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
