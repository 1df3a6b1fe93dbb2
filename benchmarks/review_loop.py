"""The review loop measured end to end: read, review, export, fine-tune, read again.

    .venv/bin/python benchmarks/review_loop.py --work /tmp/loop [--field tracking_number] [--n 50]

1. ``--n`` unseen shipping labels (seed 3000) are read by the shipped student in this process (SQLite, a
   local store) with a review threshold of 1, so every one waits for review.
2. A scripted reviewer corrects each waiting document to what is printed (the generator's truth), through
   the same repository call the review page's POST makes.
3. ``donut-hole export --reviewed`` writes them as a DONUT dataset; ``donut-hole train`` with
   ``configs/finetune-reviewed.yaml`` (``init:`` the shipped student) fine-tunes on it.
4. Both models read the held-out shipping labels (the labels of ``donut-hole synth --kind all --n 500 --seed
   1000``): exact match of ``--field`` and field F1, before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "models" / "donut-hole-small"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--field", default="tracking_number")
    parser.add_argument("--held-out", type=Path, default=Path("runs/val-pages"))
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DONUT_HOLE_DATA_DIR": str(work / "var"), "DONUT_HOLE_MODEL_PATH": str(STUDENT)}
    os.environ.update(env)
    reviewed = read_and_review(work, args.n)
    export = work / "reviewed"
    cli = [sys.executable, "-m", "donut_hole"]
    subprocess.run([*cli, "export", "--reviewed", "--out", str(export)], check=True, env=env)
    labels = held_out_labels(args.held_out, work / "held-out-labels")
    run = work / "run"
    train = [*cli, "train", "--recipe", str(ROOT / "configs/finetune-reviewed.yaml"), "--train", str(export),
             "--val", str(labels), "--out", str(run)]  # fmt: skip
    if args.steps:
        train += ["--steps", str(args.steps)]
    subprocess.run(train, check=True, env=env, cwd=ROOT)
    before = score(STUDENT, labels, args.field)
    after = score(run / "model", labels, args.field)
    print(json.dumps({"reviewed": reviewed, "held_out": str(labels), "field": args.field,
                      "before": before, "after": after}, indent=1))  # fmt: skip


def read_and_review(work: Path, n: int) -> int:
    from donut_hole.db import migrate, repository, session_scope
    from donut_hole.documents.synth import render_sample
    from donut_hole.evaluation.metrics import flatten, normalize_dict
    from donut_hole.settings import Settings
    from donut_hole.storage import open_store
    from donut_hole.worker.process import process_group
    from donut_hole.worker.runtime import Runtime

    (work / "var").mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=work / "var", model_path=STUDENT)
    migrate.upgrade(settings.database_url)
    store = open_store(settings.storage_url)
    truths, uris = [], []
    for index in range(n):
        sample = render_sample("shipping_label", seed=3000, index=index)
        path = work / f"label-{index:03d}.jpg"
        sample.image.save(path, format="JPEG", quality=sample.quality)
        uris.append(store.put(f"loop/{path.name}", path.read_bytes()))
        truths.append(sample.gt_parse)
    rt = Runtime(settings)
    try:
        with session_scope(rt.sessions) as session:
            batch = repository.create_batch(session, source="loop", uris=uris, review_threshold=1.0)
            ids = [d.id for d in batch.documents]
        for start in range(0, len(ids), 4):
            process_group(rt, ids[start : start + 4])
        done = 0
        with session_scope(rt.sessions) as session:
            latest = repository.latest_extractions(session, document_ids=ids)
        for document_id, truth in zip(ids, truths, strict=True):
            remaining: dict[str, list[str]] = {}
            for name, value in flatten(normalize_dict(truth)):
                remaining.setdefault(name, []).append(value)
            values = []
            for field in latest[document_id].fields:  # the reviewer types what is printed
                printed = remaining.get(field.name)
                values.append((field.name, printed.pop(0) if printed else field.value))
            with session_scope(rt.sessions) as session:
                repository.save_review(session, document_id=document_id, reviewer="loop", values=values)
            done += 1
        return done
    finally:
        rt.close()


def held_out_labels(source: Path, out: Path) -> Path:
    """The shipping labels of a held-out dataset folder, as a dataset of their own (links to the images)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (source / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if '"shipping_label"' in record["ground_truth"]:
            target = out / record["file_name"]
            if not target.exists():
                target.symlink_to((source / record["file_name"]).resolve())
            lines.append(line)
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def score(model: Path, data: Path, field: str) -> dict[str, float]:
    from donut_hole.evaluation.dataset import read_dataset
    from donut_hole.evaluation.evaluate import evaluate_reader
    from donut_hole.model.predict import DonutReader

    result = evaluate_reader(DonutReader.from_path(model), read_dataset(data), batch_size=4).result
    return {"f1": round(result.f1, 4), f"{field}_exact": round(result.field_exact_match.get(field, 0.0), 4)}


if __name__ == "__main__":
    main()
