"""Write the weights of a training checkpoint (``checkpoint.pt`` of ``compress`` or ``train``) as a model
folder, without the optimizer state: what a stopped run commits.

    .venv/bin/python scripts/export_checkpoint.py RUN/checkpoint.pt LIKE_MODEL_DIR OUT_DIR

``LIKE_MODEL_DIR`` is a model folder of the same structure and vocabulary (the run's ``student.grow_from``
or an earlier export): its config, processor and tokenizer go with the weights. ``compression.json`` is
copied from it when present. Prints the step and the share of zero weights.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from donut_hole.model.build import COMPRESSION_RECORD, load_model, save_model


def main(checkpoint: Path, like: Path, out: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model, processor = load_model(like)
    vocab = state.get("vocab")
    if vocab and vocab != dict(processor.tokenizer.get_vocab()):
        sys.exit(f"{checkpoint}: its vocabulary is not {like}'s")
    model.load_state_dict(state["model"])
    save_model(model, processor, out)
    if (like / COMPRESSION_RECORD).is_file() and not (out / COMPRESSION_RECORD).is_file():
        shutil.copy(like / COMPRESSION_RECORD, out / COMPRESSION_RECORD)
    weights = list(model.parameters())
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    print(f"step {state['step']}: wrote {out} ({zeros:.3f} of the weights are zero)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*(Path(arg) for arg in sys.argv[1:]))
