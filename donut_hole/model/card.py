"""Ship a trained teacher and its DONUT-hole student into ``models/`` with a model card each.

A run folder, as ``scripts/train_default_model.sh`` leaves it::

    RUN/run.json                       data seeds and sizes, commands, hardware (written by the script)
    RUN/teacher/{model/, recipe.yaml, history.jsonl, evaluation.json, anneal.json (when annealed)}
    RUN/student/{model/, recipe.yaml, report.json, evaluation.json}

:func:`ship` checks the default models' targets (:func:`targets`), copies the two model folders (safetensors,
config, processor and tokenizer files only) to ``MODELS/<teacher name>`` and ``MODELS/<student name>``,
writes into each a ``README.md`` card (commands, seeds, recipe, metrics, hardware) and its held-out scores
(``evaluation.json`` without the per-document part: the demo quotes them) and, when given a README with
the ``<!-- default-models:start -->`` / ``<!-- default-models:end -->`` markers, puts the teacher vs student
table between them. The metrics are those of ``donut-hole evaluate`` on the held-out set, so
running the command printed in the card reproduces them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHER_NAME = "teacher-small"
STUDENT_NAME = "donut-hole-small"
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "calibration.json",
    "calibration-report.json",
    "reliability.png",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "compression.json",
)
START, END = "<!-- default-models:start -->", "<!-- default-models:end -->"


class ShipError(RuntimeError):
    """The run folder is incomplete, or the models miss their targets (and shipping was not forced)."""


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def row(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        value = "–" if self.value is None else f"{self.value:.4f}"
        return f"| {self.name} | {value} | {sign} {self.limit:g} | {'met' if self.met else '**not met**'} |"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ShipError(f"{path} is missing: run the step that writes it first") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ShipError(f"{path} is not valid JSON: {exc}") from exc


def collect(run: Path) -> dict[str, Any]:
    """Everything a card needs, read from a finished run folder."""
    run = Path(run)
    for side in ("teacher", "student"):
        if not (run / side / "model" / "config.json").is_file():
            raise ShipError(f"{run / side / 'model'} holds no model (config.json)")
    history_file = run / "teacher" / "history.jsonl"
    history = (
        [json.loads(line) for line in history_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if history_file.is_file()
        else []
    )
    return {
        "run": _read_json(run / "run.json"),
        "teacher_eval": _read_json(run / "teacher" / "evaluation.json"),
        "student_eval": _read_json(run / "student" / "evaluation.json"),
        "report": _read_json(run / "student" / "report.json"),
        "teacher_history": history,
        "teacher_anneal": _read_json(run / "teacher" / "anneal.json")
        if (run / "teacher" / "anneal.json").is_file()
        else None,
        "teacher_recipe": _read_text(run / "teacher" / "recipe.yaml"),
        "student_recipe": _read_text(run / "student" / "recipe.yaml"),
    }


def targets(info: dict[str, Any]) -> list[Target]:
    """The default models' targets, on the held-out set: accuracy, density, accuracy kept, CKA and speed."""
    teacher, student, report = info["teacher_eval"], info["student_eval"], info["report"]
    batch = speed_batch(report)
    t_lat = report["teacher"]["latency"][f"ms_per_doc_batch{batch}_p50"]
    s_lat = report["student"]["latency"][f"ms_per_doc_batch{batch}_p50"]
    return [
        Target("teacher field F1", teacher["f1"], 0.95),
        Target("teacher nTED accuracy", teacher["ted_accuracy"], 0.95),
        Target(
            "student density (prunable, vs teacher)",
            report["student"]["density"]["prunable_density_vs_teacher"],
            0.46,
            higher_is_better=False,
        ),
        Target(
            "student F1 drop (points)", 100 * (teacher["f1"] - student["f1"]), 1.0, higher_is_better=False
        ),
        Target("global CKA", report["cka"]["global"], 0.79),
        Target(
            f"CPU speed-up, batch {batch} (teacher / student latency)", t_lat / s_lat if s_lat else None, 2.0
        ),
    ]


def speed_batch(report: dict[str, Any]) -> int:
    """The batch size the speed target is measured at: the worker's (``DONUT_HOLE_BATCH_SIZE``'s default)
    where the report timed it, else batch 1 (reports of earlier recipes)."""
    from donut_hole.settings import Settings

    worker = int(Settings.model_fields["batch_size"].default)
    latency = report["teacher"]["latency"]
    return worker if f"ms_per_doc_batch{worker}_p50" in latency else 1


def comparison_table(info: dict[str, Any]) -> str:
    """Teacher vs student on the held-out set, one markdown table."""
    report = info["report"]
    rows = [
        "| model | field F1 | nTED accuracy | parameters (M) | density (prunable / all, vs teacher) "
        "| weights MB | CPU ms/doc, batch 1 (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for side, name in (("teacher", TEACHER_NAME), ("student", STUDENT_NAME)):
        ev, rep = info[f"{side}_eval"], report[side]
        density = rep["density"]
        rows.append(
            f"| `{name}` | {ev['f1']:.4f} | {ev['ted_accuracy']:.4f} | {rep['parameters'] / 1e6:.2f} "
            f"| {density['prunable_density_vs_teacher']:.3f} / {density['all_density_vs_teacher']:.3f} "
            f"| {rep['file_bytes'] / 2**20:.1f} | {rep['latency']['ms_per_doc_batch1_p50']:.0f} |"
        )
    n = info["teacher_eval"]["n"]
    rows.append("")
    rows.append(
        f"Held-out set: {n} synthetic scans ({_data_line(info['run'].get('val', {}))}); global CKA "
        f"teacher/student {report['cka']['global']:.3f}; latency measured side by side in one run on "
        f"{report.get('machine', 'the compression machine')}."
    )
    return "\n".join(rows)


def _synth_command(data: dict[str, Any]) -> str:
    """The ``synth`` call that regenerates a recorded set; without a size, in each type's own page shape."""
    size = f" --width {data['width']} --height {data['height']}" if data.get("width") else ""
    return f"donut-hole synth --kind all --n {data.get('n')} --seed {data.get('seed')}{size}"


def _data_line(data: dict[str, Any]) -> str:
    if not data:
        return "see run.json"
    if data.get("rendered"):
        return "rendered on the fly by the recipes' `data` curricula (below)"
    return f"`{_synth_command(data)}`" + ("" if data.get("width") else ", in each type's own page shape")


def _checked(record: dict[str, Any]) -> str:
    """``"held-out field F1 0.904, nTED 0.977"`` of a training-time evaluation record."""
    if record.get("f1") is None:
        return "no held-out check recorded"
    return f"held-out field F1 {record['f1']:.3f}, nTED {record.get('ted_accuracy', 0.0):.3f}"


def _teacher_training(history: list[dict[str, Any]], anneal: dict[str, Any] | None) -> str:
    """How the teacher was trained, in words, from its run's history and its anneal, if annealed."""
    if anneal:  # the run may have gone on since: what the copy was made from is the history up to its step
        history = [record for record in history if record.get("step", 0) <= anneal["from_step"]]
    if not history:
        return "no training history recorded."
    last = history[-1]
    seen = f"{last.get('images', 0):,} images, {last.get('cpu_hours', 0.0):.1f} CPU-hours"
    if anneal:
        size = anneal.get("image_size")
        at = f" at a {size[0]}x{size[1]} input" if size else ""
        return (
            f"a copy of the teacher run's step {anneal['from_step']:,}, annealed over {anneal['steps']:,} "
            f"more steps{at} while the learning rate decayed; the run's last evaluation before it, at "
            f"{seen}: {_checked(last)} (a few dozen scans, at its constant learning rate)."
        )
    return f"{seen} in {last.get('step', 0):,} optimizer steps; its last evaluation: {_checked(last)}."


def _student_training(history: list[dict[str, Any]], structure: dict[str, Any] | None = None) -> str:
    """How the student was distilled, in words, from its report's history and the structure it kept
    (a student whose layers alone are under the target density had no weights pruned by magnitude)."""
    if not history:
        return "no distillation steps (pruned in one shot)."
    last = history[-1]
    density = last.get("density")
    at = f" to density {density:.3f}" if density is not None else ""
    how = f"while pruned{at}"
    if (structure or {}).get("unstructured_density_over_student", 0.0) >= 1.0:
        how = f"at density {density:.3f} by the layers it kept alone" if density is not None else "unpruned"
    steps = last.get("average_of") or []
    mean = f"; it is the mean of its weights at steps {', '.join(f'{s:,}' for s in steps)}" if steps else ""
    return (
        f"distilled for {last.get('step', 0):,} steps, {last.get('images', 0):,} images, "
        f"{last.get('cpu_hours', 0.0):.2f} CPU-hours, {how}{mean}; "
        f"at the end, {_checked(last)} (a few dozen scans)."
    )


def _field_table(evaluation: dict[str, Any]) -> str:
    rows = ["| field | exact match |", "|---|---:|"]
    rows += [f"| {name} | {score:.3f} |" for name, score in evaluation.get("field_exact_match", {}).items()]
    return "\n".join(rows)


def render_card(info: dict[str, Any], *, side: str, folder: str, checks: list[Target]) -> str:
    """The README.md of ``models/<folder>``."""
    run, report = info["run"], info["report"]
    evaluation = info[f"{side}_eval"]
    own = TEACHER_NAME if side == "teacher" else STUDENT_NAME
    if side == "teacher":
        summary = (
            f"A small DONUT (DonutSwin encoder + mBART decoder) trained from scratch on synthetic logistics "
            f"scans (shipping labels, bills of lading, delivery notes) by this project's own commands. It is "
            f"the teacher of `{STUDENT_NAME}`."
        )
        recipe = info["teacher_recipe"]
        training = _teacher_training(info["teacher_history"], info.get("teacher_anneal"))
    else:
        structure = report.get("student_structure", {})
        summary = (
            f"The DONUT-hole student of `{TEACHER_NAME}` (knowledge distillation + pruning, "
            f"arXiv 2311.05778): Swin depths {structure.get('encoder_depths')} (teacher "
            f"{structure.get('teacher_encoder_depths')}), decoder layers {structure.get('decoder_layers')} "
            "of the teacher's. This is the project's default model (`DONUT_HOLE_MODEL_PATH`)."
        )
        recipe = info["student_recipe"]
        training = _student_training(report.get("history", []), structure)
    commands = "\n".join(run.get("commands", []))
    evaluate = f"donut-hole evaluate --model models/{folder} --data <held-out set>"
    if run.get("max_new_tokens"):
        evaluate += f" --max-new-tokens {run['max_new_tokens']}"
    target_rows = "\n".join(t.row() for t in checks)
    return f"""---
library_name: transformers
tags: [donut, donut-hole, document-understanding, logistics, synthetic-data]
---

# {own}

{summary}

{stock_usage(f"models/{folder}")}

## Held-out metrics

{comparison_table(info)}

Per-field exact match of this model:

{_field_table(evaluation)}

Reproduce the numbers (the held-out set is regenerated byte for byte from its seed):

```bash
{_synth_command(run.get("val", {}))} --out val
{evaluate.replace("<held-out set>", "val")}
```

## Targets

| target | value | limit | |
|---|---:|---:|---|
{target_rows}

## How it was made

Training data: {_data_line(run.get("train", {}))}; held-out: {_data_line(run.get("val", {}))}.

Hardware: {run.get("hardware", "not recorded")}.
Started {run.get("started", "?")}, finished {run.get("finished", "?")}.

Training: {training}

Commands:

```bash
{commands}
```

Recipe (`recipe.yaml` of the run, defaults filled in):

```yaml
{recipe.strip()}
```
"""


def stock_usage(folder: str) -> str:
    """The card's "Use it" section: ``donut-hole predict``, and stock transformers (4.x or 5.x) alone,
    as ``scripts/read_with_stock_transformers.py`` runs it in CI."""
    return f"""## Use it

```bash
donut-hole predict --model {folder} scan.jpg       # one JSON line per page: fields, confidence
```

With stock transformers (4.x or 5.x) alone; the task prompt is `<s_logistics>`, the decoder start token:

```python
import re
from PIL import Image
from transformers import DonutProcessor, VisionEncoderDecoderModel

processor = DonutProcessor.from_pretrained("{folder}")
model = VisionEncoderDecoderModel.from_pretrained("{folder}").eval()
tok = processor.tokenizer
prompt = tok("<s_logistics>", add_special_tokens=False, return_tensors="pt").input_ids
pixel_values = processor(Image.open("scan.jpg").convert("RGB"), return_tensors="pt").pixel_values
out = model.generate(pixel_values, decoder_input_ids=prompt,
                     max_length=model.decoder.config.max_position_embeddings,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     bad_words_ids=[[tok.unk_token_id]])
sequence = tok.batch_decode(out)[0].replace(tok.eos_token, "").replace(tok.pad_token, "")
print(processor.token2json(re.sub(r"<.*?>", "", sequence, count=1).strip()))
```"""


def copy_model(source: Path, target: Path) -> Path:
    """Copy the files a checkpoint needs (no optimizer state, no history) into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return target


def update_readme(readme: Path, table: str) -> bool:
    """Replace what lies between the README's markers with ``table``; False when it has no markers."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")
    return True


def ship(run: Path, models: Path, *, readme: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Check the targets, copy both models into ``models``, write their cards; returns what was done."""
    info = collect(Path(run))
    checks = targets(info)
    missed = [t for t in checks if not t.met]
    if missed and not force:
        raise ShipError(
            "targets not met, nothing shipped (use --force to ship anyway): "
            + "; ".join(f"{t.name} = {t.value if t.value is None else round(t.value, 4)}" for t in missed)
        )
    shipped = {}
    for side, folder in (("teacher", TEACHER_NAME), ("student", STUDENT_NAME)):
        target = copy_model(Path(run) / side / "model", Path(models) / folder)
        scores = {k: v for k, v in info[f"{side}_eval"].items() if k != "documents"}
        (target / "evaluation.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        (target / "README.md").write_text(
            render_card(info, side=side, folder=folder, checks=checks), encoding="utf-8"
        )
        shipped[side] = target
    table_written = update_readme(readme, comparison_table(info)) if readme is not None else False
    return {"models": shipped, "targets": checks, "missed": missed, "readme_updated": table_written}
