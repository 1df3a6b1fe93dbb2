"""``make demo``: the whole online pipeline on the embedded defaults, with real worker processes.

synthetic scans (and one 3-page PDF made of three of them) → local object store → SQLite rows → Celery
messages (server-less SQLite broker) →
``donut-hole worker`` processes (batched generation) → extractions and fields in SQLite → a table of the
results with accuracy against the ground truth and throughput.

The model is ``settings.model_path`` when that folder exists. While no trained model is shipped in
``models/``, the default path falls back to the default teacher as far as it has trained
(:data:`IN_TRAINING`, committed with its evaluation); without that, a tiny *untrained* model is built
(accuracy ~0: the demo then shows the plumbing, not the reading).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from donut_hole.db import migrate, repository, session_scope
from donut_hole.services import Services
from donut_hole.settings import DEFAULT_MODEL_PATH, REPO_ROOT, Settings, without_credentials
from donut_hole.worker.enqueue import submit_files

KINDS = ("shipping_label", "bill_of_lading", "delivery_note")
BUNDLE_NAME = "delivery-bundle.pdf"
BUNDLE_PAGES = 3


IN_TRAINING = REPO_ROOT / "checkpoints" / "teacher-cpu" / "annealed"
"""The default teacher as far as it has trained (its annealed copy, with its evaluation.json): what the demo
reads with while no trained model is shipped in ``models/``."""


class DemoError(RuntimeError):
    """The demo could not finish; the message says what went wrong and where the worker log is."""


@dataclass
class DemoResult:
    batch_id: str
    counts: dict[str, int]
    f1: float
    ted_accuracy: float
    seconds: float  # from starting the workers to the last document stored
    docs_per_s: float  # documents / (last finished - first started), from the rows' timestamps
    trained: bool


def run_demo(
    settings: Settings,
    *,
    n: int = 12,
    seed: int = 0,
    concurrency: int | None = None,
    timeout_s: float = 300.0,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo end to end (see the module docstring) and leave the results in the database."""
    console = console or Console()
    workdir = settings.data_dir.resolve() / "demo"
    workdir.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]donut-hole demo")
    scans, answers = demo_scans(workdir / "scans", n=n, seed=seed)
    bundle = demo_pdf(scans, answers)
    console.print(
        f"1. {n} synthetic logistics scans ({', '.join(KINDS)}) and {bundle.name}, a {BUNDLE_PAGES}-page "
        f"PDF of three of them, in {scans}"
    )
    model_path, trained = demo_model(settings, workdir, answers)
    if model_path == IN_TRAINING:
        console.print(
            f"2. model {_shown_path(model_path)}: [bold yellow]the default teacher, still in training[/] "
            f"(no model is shipped in {_shown_path(DEFAULT_MODEL_PATH)} yet){_scores_of(model_path)}"
        )
    elif trained:
        console.print(f"2. model {_shown_path(model_path)}{_scores_of(model_path)}")
    else:
        console.print(
            f"2. [bold yellow]untrained model: accuracy will be ~0[/] ({settings.model_path} does not exist; "
            f"built a tiny random DONUT in {model_path} to show the pipeline)"
        )
    settings = settings.model_copy(update={"model_path": model_path})
    migrate.upgrade(settings.database_url)
    console.print(f"3. database {_shown(settings.database_url)} migrated")
    with Services(settings) as services:
        paths = [*sorted(scans.glob("*.jpg")), bundle]
        batch_id = submit_files(services, paths=paths, source="demo")
        console.print(
            f"4. batch [bold]{batch_id}[/] queued on {_shown(settings.broker_url)}, "
            f"store {settings.storage_url}"
        )
        processes = concurrency or min(2, _cores())
        log_path = workdir / "worker.log"
        console.print(f"5. starting {processes} worker processes (log: {log_path})")
        sessions = services.sessions
        start = time.perf_counter()
        worker = start_worker(settings, processes=processes, log_path=log_path)
        stopping = False
        try:
            counts = follow_batch(sessions, batch_id, worker, log_path, timeout_s=timeout_s, console=console)
            seconds = time.perf_counter() - start
            worker.send_signal(signal.SIGTERM)  # the warm shutdown runs while the report is printed
            stopping = True
            result = _report(
                sessions, batch_id, answers, counts, seconds=seconds, trained=trained, console=console
            )
        finally:
            stop_worker(worker, signalled=stopping)
    _print_next_steps(settings, batch_id, console)
    return result


# ------------------------------------------------------------------------------------------- preparing


def demo_scans(folder: Path, *, n: int, seed: int) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The demo's scans (made once per ``n``/``seed``) and their ground truth by file name."""
    from donut_hole.documents.synth import generate
    from donut_hole.evaluation.dataset import read_dataset

    folder = folder / f"n{n}-seed{seed}"
    if not (folder / "metadata.jsonl").is_file():
        generate(list(KINDS), n=n, out=folder, seed=seed, progress=False)
    return folder, {s.image_path.name: s.gt_parse for s in read_dataset(folder)}


def demo_pdf(folder: Path, answers: dict[str, dict[str, Any]]) -> Path:
    """A multi-page PDF of the folder's first scans (150 dpi), as a logistics team gets them; each page's
    ground truth is added to ``answers`` under the page's name (``delivery-bundle.pdf#page=2``)."""
    from PIL import Image

    from donut_hole.db.models import page_uri

    pages = sorted(folder.glob("*.jpg"))[:BUNDLE_PAGES]
    path = folder / BUNDLE_NAME
    if not path.is_file():
        images = [Image.open(page).convert("RGB") for page in pages]
        images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=150.0)
    for number, page in enumerate(pages, start=1):
        answers[page_uri(BUNDLE_NAME, page=number)] = answers[page.name]
    return path


def demo_model(settings: Settings, workdir: Path, answers: dict[str, dict[str, Any]]) -> tuple[Path, bool]:
    """(model folder, whether it is trained): ``settings.model_path``; for the default path while nothing is
    shipped there, :data:`IN_TRAINING`; else a tiny untrained model built in ``workdir``."""
    if (Path(settings.model_path) / "config.json").is_file():
        return Path(settings.model_path), True
    if Path(settings.model_path) == DEFAULT_MODEL_PATH and (IN_TRAINING / "config.json").is_file():
        return IN_TRAINING, True
    path = workdir / "untrained-tiny"
    if not (path / "config.json").is_file():
        from transformers.utils import logging as hf_logging

        from donut_hole.model.build import new_model, save_model

        hf_logging.disable_progress_bar()
        model, processor = new_model("tiny", documents=list(answers.values()))
        save_model(model, processor, path)
    return path, False


def _scores_of(model: Path) -> str:
    """``"; on its 500 held-out scans: field F1 0.881, nTED 0.971"`` from the folder's evaluation.json."""
    try:
        report = json.loads((model / "evaluation.json").read_text())
        f1, ted = report["f1"], report["ted_accuracy"]
        return f"; on its {report['n']} held-out scans: field F1 {f1:.3f}, nTED {ted:.3f}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies under it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cores() -> int:
    from donut_hole.worker.runtime import cpu_count

    return cpu_count()


# -------------------------------------------------------------------------------------------- workers


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as ``DONUT_HOLE_*`` variables (lists as JSON)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DONUT_HOLE_")}
    for name, value in settings.model_dump(mode="json").items():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):  # dumped as "**********"
            value = secret.get_secret_value()
        if value is not None:
            env[f"DONUT_HOLE_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


def start_worker(settings: Settings, *, processes: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``donut-hole worker`` in its own process group, with ``settings`` in its environment."""
    env = settings_env(settings)
    command = [sys.executable, "-m", "donut_hole", "worker", "--concurrency", str(processes)]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_worker(worker: subprocess.Popen[bytes], *, signalled: bool = False, grace_s: float = 20.0) -> None:
    """Warm shutdown (SIGTERM to the main process, which stops its pool), then SIGKILL to the group."""
    if worker.poll() is None:
        if not signalled:
            worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(grace_s)
    _signal_group(worker.pid, signal.SIGKILL)  # pool processes that outlived their parent
    if worker.poll() is None:
        worker.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def follow_batch(
    sessions: Any,
    batch_id: str,
    worker: subprocess.Popen[bytes],
    log_path: Path,
    *,
    timeout_s: float,
    console: Console,
) -> dict[str, int]:
    """A progress bar from the database counts until every document is done or failed."""
    columns = (
        TextColumn("   reading"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("documents", total=None, failed=0)
        while True:
            with session_scope(sessions) as session:
                counts = repository.batch_progress(session, batch_id=batch_id)
            finished = counts["done"] + counts["failed"] + counts.get("needs_review", 0)
            progress.update(task, total=counts["total"], completed=finished, failed=counts["failed"])
            if finished == counts["total"]:
                return counts
            if worker.poll() is not None:
                raise DemoError(f"the worker exited with code {worker.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"not finished after {timeout_s:.0f} s ({counts}); worker log:\n{_tail(log_path)}"
                )
            time.sleep(0.25)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------------- reporting


def _report(
    sessions: Any,
    batch_id: str,
    answers: dict[str, dict[str, Any]],
    counts: dict[str, int],
    *,
    seconds: float,
    trained: bool,
    console: Console,
) -> DemoResult:
    from donut_hole.evaluation.metrics import evaluate

    preds, truth = [], []
    table = Table(title=f"batch {batch_id}", show_lines=False)
    for column in ("scan", "status", "extracted fields", "conf", "note"):
        table.add_column(
            column,
            justify="right" if column == "conf" else "left",
            min_width={"scan": 10, "status": 6}.get(column),
        )
    started, finished = [], []
    with session_scope(sessions) as session:
        for row in repository.results_for_batch(session, batch_id=batch_id):
            document = repository.get_document(session, document_id=row["document_id"])
            assert document is not None
            started.append(document.started_at)
            finished.append(document.finished_at)
            data = document.extractions[-1].data if document.extractions else {}
            name = row["uri"].rsplit("/", 1)[-1]
            preds.append(data)
            truth.append(answers.get(name, {}))
            confidence = f"{row['confidence']:.3f}" if row["confidence"] is not None else ""
            table.add_row(
                name,
                row["status"],
                _clip("; ".join(f"{k}={_value(v)}" for k, v in row["fields"].items()), 90),
                confidence,
                _clip(row["error"] or row["note"] or "", 36),
            )
    console.print(table)
    scores = evaluate(preds, truth)
    spans = [t for t in started if t], [t for t in finished if t]
    busy_s = (max(spans[1]) - min(spans[0])).total_seconds() if all(spans) else 0.0
    docs_per_s = counts["done"] / busy_s if busy_s > 0 else 0.0
    untrained = "" if trained else "  [yellow](untrained model: ~0 is expected)[/]"
    console.print(
        f"accuracy vs ground truth: field F1 [bold]{scores.f1:.3f}[/]  nTED accuracy "
        f"[bold]{scores.ted_accuracy:.3f}[/]  over {scores.n} documents{untrained}"
    )
    console.print(
        f"throughput: [bold]{docs_per_s:.2f} docs/s[/] while reading ({counts['done']} done, "
        f"{counts['failed']} failed, {busy_s:.1f} s); {seconds:.1f} s including worker start-up"
    )
    return DemoResult(
        batch_id=batch_id,
        counts=counts,
        f1=scores.f1,
        ted_accuracy=scores.ted_accuracy,
        seconds=seconds,
        docs_per_s=docs_per_s,
        trained=trained,
    )


def _value(value: str | list[str]) -> str:
    return " | ".join(value) if isinstance(value, list) else value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_next_steps(settings: Settings, batch_id: str, console: Console) -> None:
    console.print("\nthe results stay in the database; read them with")
    console.print(f"  donut-hole results --batch {batch_id} --format table", highlight=False, markup=False)
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        query = (
            "SELECT d.uri, f.name, f.value, round(f.confidence, 3) FROM documents d "
            "JOIN extractions e ON e.document_id = d.id JOIN fields f ON f.extraction_id = e.id "
            f"WHERE d.batch_id = '{batch_id}' ORDER BY d.uri, f.id LIMIT 20;"
        )
        console.print(f'  sqlite3 {_relative(path)} "{query}"', highlight=False, markup=False, soft_wrap=True)


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _shown(url: str) -> str:
    return without_credentials(url)
