"""Read scans with stock transformers only (no donut_hole import), as a user of the model folders would.

    python scripts/read_with_stock_transformers.py MODEL_DIR SCAN [SCAN ...]

Prints one JSON line per scan: {"file", "fields"}. This is the model cards' snippet, run for real: the
interoperability check runs it in a second virtual environment with transformers 4.x and compares its
fields with ``donut-hole predict``'s.
"""

from __future__ import annotations

import json
import re
import sys

import torch
from PIL import Image
from transformers import DonutProcessor, VisionEncoderDecoderModel


def main(folder: str, scans: list[str]) -> None:
    processor = DonutProcessor.from_pretrained(folder)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tokenizer = processor.tokenizer
    task_prompt = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)  # "<s_logistics>"
    prompt = tokenizer(task_prompt, add_special_tokens=False, return_tensors="pt").input_ids
    for scan in scans:
        pixel_values = processor(Image.open(scan).convert("RGB"), return_tensors="pt").pixel_values
        with torch.no_grad():
            output = model.generate(
                pixel_values,
                decoder_input_ids=prompt,
                max_length=model.decoder.config.max_position_embeddings,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bad_words_ids=[[tokenizer.unk_token_id]],
                use_cache=True,
            )
        sequence = tokenizer.batch_decode(output)[0]
        sequence = sequence.replace(tokenizer.eos_token, "").replace(tokenizer.pad_token, "")
        sequence = re.sub(r"<.*?>", "", sequence, count=1).strip()  # the task prompt
        print(json.dumps({"file": scan, "fields": processor.token2json(sequence)}, ensure_ascii=False))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
