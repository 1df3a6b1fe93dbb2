"""Documents per second through the whole pipeline against the model alone, on the same scans in one run.

    .venv/bin/python benchmarks/pipeline.py                       # embedded defaults in a temporary folder
    .venv/bin/python benchmarks/pipeline.py --n 96 --concurrency 2 --batch-size 8
    DONUT_HOLE_BROKER_URL=redis://... DONUT_HOLE_DATABASE_URL=postgresql://... \\
    DONUT_HOLE_STORAGE_URL=s3://... .venv/bin/python benchmarks/pipeline.py   # against real services

model only   ``DonutReader.predict_detailed`` over the scans' bytes in batches of ``--batch-size`` (decode +
             preprocess + generate), in one process with every core, and in ``--concurrency`` processes that
             share the cores as the workers do: the latter is the ceiling the pipeline is compared with.
pipeline     the scans already in the object store; the clock runs from ``submit_uris`` to the last document
             stored, with ``--concurrency`` warm worker processes (a warm-up batch goes first): messages,
             fetching, decoding, generation, validation and SQL writes.

The ratio pipeline / model-only is the share of the model's speed the pipeline keeps. Without a trained
model (``DONUT_HOLE_MODEL_PATH``) a tiny untrained one is used; it generates exactly ``--max-new-tokens``
tokens per document, the same work on both sides.

``--compare-engine`` measures the pipeline twice on the same scans in one run, its workers reading without
the decoding engine (``DONUT_HOLE_ENGINE=false``, batch by batch as before it) and with it, and counts the
documents whose stored fields are the same in both::

    .venv/bin/python benchmarks/pipeline.py --model models/donut-hole-small --scans runs/val-pages --n 48 \
        --concurrency 2 --max-new-tokens 512 --compare-engine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from donut_hole.db import migrate
from donut_hole.demo import demo_model, demo_scans, follow_batch, start_worker, stop_worker
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.worker.enqueue import submit_uris
from donut_hole.worker.runtime import cpu_count


def _read_slice(
    model_path: str, max_new_tokens: int, batch_size: int, threads: int, paths: list[str], barrier
) -> float:
    """Seconds one process takes to read ``paths`` after a warm-up; processes start the clock together."""
    import torch

    from donut_hole.model.predict import DonutReader

    torch.set_num_threads(threads)
    reader = DonutReader.from_path(model_path, max_new_tokens=max_new_tokens)
    scans = [Path(path).read_bytes() for path in paths]
    reader.predict_detailed(scans[:batch_size], batch_size=batch_size)
    barrier.wait()
    start = time.perf_counter()
    reader.predict_detailed(scans, batch_size=batch_size)
    return time.perf_counter() - start


def model_only(settings: Settings, paths: list[Path], *, processes: int) -> float:
    """Documents per second of the model alone: ``processes`` processes sharing the cores, no queue or SQL."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, cpu_count() // processes)
    slices = [[str(p) for p in paths[i::processes]] for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        barrier = manager.Barrier(processes)
        args = (str(settings.model_path), settings.max_new_tokens, settings.batch_size, threads)
        seconds = list(pool.map(_read_slice, *zip(*[(*args, part, barrier) for part in slices], strict=True)))
    return len(paths) / max(seconds)


def pipeline(
    services: Services, paths: list[Path], *, concurrency: int, console: Console
) -> tuple[float, str]:
    """Documents per second from submitting the scans' URIs to the last one stored, warm workers; and the
    measured batch's id."""
    settings, store, sessions = services.settings, services.store, services.sessions
    run = f"bench/{time.strftime('%Y%m%d-%H%M%S')}"
    uris = [store.put(f"{run}/{path.name}", path.read_bytes()) for path in paths]
    # Warm-up: a group for every worker process, so that each has loaded its model before the clock starts.
    first = paths[: settings.batch_size * concurrency]
    warm_up = [store.put(f"{run}-warm-up/{path.name}", path.read_bytes()) for path in first]
    log_path = settings.data_dir.resolve() / "bench-worker.log"
    worker = start_worker(settings, processes=concurrency, log_path=log_path)
    try:
        warm = submit_uris(services, uris=warm_up, source="bench")
        follow_batch(sessions, warm, worker, log_path, timeout_s=600, console=console)
        start = time.perf_counter()
        batch_id = submit_uris(services, uris=uris, source="bench")
        counts = follow_batch(sessions, batch_id, worker, log_path, timeout_s=3600, console=console)
        seconds = time.perf_counter() - start
    finally:
        stop_worker(worker)
    if counts["failed"]:
        console.print(f"[red]{counts['failed']} documents failed; see {log_path}")
    return counts["done"] / seconds, batch_id


def stored_fields(services: Services, batch_id: str) -> dict[str, dict]:
    """The stored fields of each document of a batch, by file name."""
    from donut_hole.db import repository, session_scope

    with session_scope(services.sessions) as session:
        rows = repository.results_for_batch(session, batch_id=batch_id)
    return {row["uri"].rsplit("/", 1)[-1]: dict(row["fields"]) for row in rows}


def compare_engine(settings: Settings, paths: list[Path], *, concurrency: int, console: Console) -> dict:
    """The pipeline without the decoding engine and with it, on the same scans, side by side."""
    rates, fields = {}, {}
    for engine in (False, True):
        with Services(settings.model_copy(update={"engine": engine})) as services:
            rates[engine], batch_id = pipeline(services, paths, concurrency=concurrency, console=console)
            fields[engine] = stored_fields(services, batch_id)
    same = sum(fields[True].get(name) == value for name, value in fields[False].items())
    table = Table(title="pipeline without and with the decoding engine (same scans, same run)")
    for column in ("workers read", "docs/s"):
        table.add_column(column)
    table.add_row("batch by batch (DONUT_HOLE_ENGINE=false)", f"{rates[False]:.2f}")
    table.add_row("decoding engine", f"{rates[True]:.2f}")
    table.add_row("ratio", f"{rates[True] / rates[False]:.2f}")
    table.add_row("documents with the same stored fields", f"{same}/{len(fields[False])}")
    console.print(table)
    return {
        "without_engine_docs_per_s": round(rates[False], 3),
        "engine_docs_per_s": round(rates[True], 3),
        "ratio": round(rates[True] / rates[False], 3),
        "same_fields": same,
        "documents": len(fields[False]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=48, help="scans to read (default 48)")
    parser.add_argument("--concurrency", type=int, default=min(2, cpu_count()), help="worker processes")
    parser.add_argument("--batch-size", type=int, default=4, help="documents per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per document")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="working folder (default: a temporary one)"
    )
    parser.add_argument("--model", type=Path, help="model folder (default: the demo's)")
    parser.add_argument(
        "--scans", type=Path, help="a folder of scans to read, the first --n (default: the demo's)"
    )
    parser.add_argument(
        "--compare-engine", action="store_true", help="the pipeline without and with the decoding engine"
    )
    args = parser.parse_args()
    console = Console()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="donut-hole-bench-"))
    settings = Settings(data_dir=data_dir).model_copy(
        update={"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.scans:
        paths = sorted(args.scans.glob("*.jpg"))[: args.n]
    else:
        scans, answers = demo_scans(data_dir / "scans", n=args.n, seed=0)
        paths = sorted(scans.glob("*.jpg"))
    if args.model:
        model_path, trained = args.model, True
    else:
        model_path, trained = demo_model(settings, data_dir, answers if not args.scans else {})
    settings = settings.model_copy(update={"model_path": model_path})
    migrate.upgrade(settings.database_url)
    if args.compare_engine:
        console.print(f"model {model_path}; {len(paths)} scans; {args.concurrency} workers")
        print(json.dumps(compare_engine(settings, paths, concurrency=args.concurrency, console=console)))
        return

    console.print(
        f"model {model_path}{'' if trained else ' (untrained tiny: speed only)'}; {len(paths)} scans"
    )
    single = model_only(settings, paths, processes=1)
    alone = model_only(settings, paths, processes=args.concurrency) if args.concurrency > 1 else single
    console.print(f"model only: {single:.2f} docs/s in 1 process, {alone:.2f} in {args.concurrency}")
    with Services(settings) as services:
        through, _ = pipeline(services, paths, concurrency=args.concurrency, console=console)

    table = Table(title="pipeline vs model only (same scans, same run)")
    for column in ("measure", "docs/s"):
        table.add_column(column)
    table.add_row(f"model only, 1 process x {cpu_count()} threads, batch {args.batch_size}", f"{single:.2f}")
    layout = f"{args.concurrency} processes x {max(1, cpu_count() // args.concurrency)} threads"
    table.add_row(f"model only, {layout}, batch {args.batch_size}", f"{alone:.2f}")
    table.add_row(
        f"pipeline end to end ({args.concurrency} workers, groups of {args.batch_size})", f"{through:.2f}"
    )
    table.add_row(f"ratio pipeline / model only ({layout})", f"{through / alone:.2f}")
    console.print(table)
    summary = {
        "n": len(paths),
        "model": str(model_path),
        "trained": trained,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "max_new_tokens": args.max_new_tokens,
        "broker": settings.broker_url.split("@")[-1],
        "database": settings.database_url.split("@")[-1],
        "model_only_1_process_docs_per_s": round(single, 3),
        "model_only_docs_per_s": round(alone, 3),
        "pipeline_docs_per_s": round(through, 3),
        "ratio": round(through / alone, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
