"""The default models' training chain, resumable: teacher → anneal → DONUT-hole student → evaluation.

``donut-hole train-default RUN`` runs it (``--help`` lists the options). Each phase is the project's own
command in a process of its own (``synth``, ``train``, ``compress``, ``evaluate``), so a phase that is
stopped (SIGTERM or Ctrl-C: it checkpoints first) goes on where it was when the chain runs again:

- The teacher (``configs/teacher-cpu.yaml``) learns on pages rendered on the fly at a constant learning
  rate for its recipe's steps (or until its held-out field F1 reaches ``train.target_f1``); it starts from
  the committed ``checkpoints/teacher-cpu`` when the run has no checkpoint of its own.
- An annealed copy of it (``anneal_steps`` more steps with the rate decaying, at ``anneal_size``) becomes
  the teacher that is distilled; the open-ended run is left as it was.
- The student (``configs/donut-hole-cpu.yaml``) is distilled on scans rendered by its recipe.
- Both are evaluated on 500 held-out scans (seed 1000) in their own page shapes (``val-pages``:
  ``evaluation.json``) and at 448x448 (``val``: ``evaluation-448.json``).

``save`` keeps what the next machine needs in ``checkpoints/``: the curves, the log, the record of the
run (``run.json``) and, beside them but never committed (``.gitignore``), the resumable ``checkpoint.pt``.
On a machine without that file a run resumes from committed weights with a fresh optimizer (``init:`` the
model folder, a short warm-up).
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = "checkpoint.pt"


class ChainError(RuntimeError):
    """A phase that cannot run (nothing to keep, no teacher to anneal) or a command that failed."""


@dataclass
class Chain:
    """The options of one run of the chain (``donut-hole train-default --help`` says what each does)."""

    run: Path = Path("runs/default")
    n_train: int = 12000
    teacher_recipe: Path = Path("configs/teacher-cpu.yaml")
    student_recipe: Path = Path("configs/donut-hole-cpu.yaml")
    keep: Path = Path("checkpoints/teacher-cpu")
    student_keep: Path | None = None  # default: checkpoints/<student recipe's name>
    n_val: int = 500
    from_scratch: bool = False
    smoke: bool = False
    teacher_only: bool = False
    student_only: bool = False
    init: str | None = None
    teacher_seconds: float | None = None
    student_seconds: float | None = None
    anneal_steps: int | None = None  # default: 1000 for a teacher that renders its data, else 0
    anneal_size: int | None = -1  # -1: 672 for a teacher that renders its data; None: the recipe's own
    anneal_min: float = 0.05
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "donut_hole"])
    invocation: str = ""

    def __post_init__(self) -> None:
        if self.student_keep is None:
            self.student_keep = Path("checkpoints") / self.student_recipe.stem
        renders = self.renders(self.teacher_recipe)
        if self.anneal_steps is None:
            self.anneal_steps = 1000 if renders else 0
        if self.anneal_size == -1:
            self.anneal_size = 672 if renders else None
        self.max_new = 512
        self.smoke_set: list[str] = []
        self.extra: list[str] = []
        if self.smoke:
            self.n_train, self.n_val, self.max_new = 16, 4, 16
            if self.anneal_steps:
                self.anneal_steps = 2
            self.smoke_set = [
                "--set",
                "train.eval_every=2",
                "--set",
                "train.eval_samples=2",
                "--set",
                "train.max_new_tokens=16",
            ]
            self.extra = ["--steps", "4", *self.smoke_set]
        # a run goes on from the committed checkpoints when it has none of its own; not a smoke run, nor
        # one from scratch (the whole pair retrained from nothing: about 10 hours on 2 cores)
        self.from_kept = not (self.smoke or self.from_scratch)

    # ------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def renders(recipe: Path) -> bool:
        """Whether a recipe renders its training scans (a ``data:`` curriculum), not read from a folder."""
        return any(line.startswith("data:") for line in recipe.read_text(encoding="utf-8").splitlines())

    def call(self, *args: str) -> None:
        """One of the project's commands, in a process of its own; a failure stops the chain."""
        done = subprocess.run([*self.command, *args], check=False)
        if done.returncode != 0:
            raise ChainError(f"{args[0]} stopped (exit code {done.returncode}); run the chain again to go on")

    def path(self, *parts: str) -> Path:
        return self.run.joinpath(*parts)

    # ------------------------------------------------------------------------------------------- phases

    def synth(self, folder: str, *, n: int, seed: int, square: bool) -> Path:
        """``RUN/folder``: ``n`` scans of all kinds for ``seed`` (at 448x448, or in their own page shapes)."""
        out = self.path(folder)
        if not (out / "metadata.jsonl").is_file():
            size = ["--width", "448", "--height", "448"] if square else []
            self.call("synth", "--kind", "all", "--n", str(n), "--seed", str(seed), *size, "--out", str(out))
        return out

    def synth_val(self) -> None:
        self.synth("val", n=self.n_val, seed=1000, square=True)
        self.synth("val-pages", n=self.n_val, seed=1000, square=False)

    def synth_train(self) -> list[str]:
        return ["--train", str(self.synth("train", n=self.n_train, seed=0, square=True))]

    def evaluate_both(self, folder: Path) -> None:
        """``folder/model`` on both held-out sets, unless read since it was saved."""
        weights = folder / "model" / "model.safetensors"
        for data, name in (("val-pages", "evaluation.json"), ("val", "evaluation-448.json")):
            out = folder / name
            if out.is_file() and weights.is_file() and out.stat().st_mtime > weights.stat().st_mtime:
                continue
            self.call(
                "evaluate",
                "--model",
                str(folder / "model"),
                "--data",
                str(self.path(data)),
                "--max-new-tokens",
                str(self.max_new),
                "--batch-size",
                "16",
                "--out",
                str(out),
            )

    def anneal(self, steps: int) -> None:
        """A copy of the teacher's newest checkpoint trains ``steps`` more steps while its learning rate
        decays, in ``RUN/anneal``; a teacher that moved on since is annealed afresh."""
        import torch

        checkpoint = self.path("teacher", CHECKPOINT)
        if not checkpoint.is_file():
            raise ChainError(f"no teacher checkpoint in {self.path('teacher')}")
        start = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["step"])
        mark: dict[str, object] = {"from_step": start, "steps": steps}
        size: list[str] = []
        if self.anneal_size:  # Swin's weights fit any input size: the copy goes on at this one
            size = ["--set", f"model.image_size=[{self.anneal_size}, {self.anneal_size}]"]
            mark["image_size"] = [self.anneal_size, self.anneal_size]
        folder = self.path("anneal")
        marker = folder / "anneal.json"
        if marker.is_file() and json.loads(marker.read_text()) != mark:
            print(f"{folder} was annealed from another checkpoint, steps or size: annealing afresh")
            shutil.rmtree(folder)
        if not marker.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name in (CHECKPOINT, "history.jsonl", "train_log.jsonl"):
                shutil.copy2(self.path("teacher", name), folder / name)
            marker.write_text(json.dumps(mark))
        print(f"annealing the teacher from step {start} over {steps} steps in {folder}")
        self.call(
            "train",
            "--recipe",
            str(self.teacher_recipe),
            "--val",
            str(self.path("val")),
            "--out",
            str(folder),
            "--resume",
            "--steps",
            str(start + steps),
            "--set",
            f"train.decay_steps={steps}",
            "--set",
            f"train.min_lr_ratio={self.anneal_min}",
            "--set",
            "train.target_f1=null",
            *size,
            *self.smoke_set,
        )
        self.evaluate_both(folder)

    def record(self, event: str) -> None:
        """``run.json``: data seeds and sizes, the commands, the hardware (``ship`` writes them in cards)."""
        import torch

        from donut_hole.model.predict import describe_cpu

        path = self.path("run.json")
        run = json.loads(path.read_text()) if path.is_file() else {}
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if event == "started":
            gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
            run.setdefault("started", now)
            run.setdefault("sessions", []).append(
                {"started": now, "hardware": gpu or f"{describe_cpu()} (no GPU)"}
            )
            run["hardware"] = "; ".join(dict.fromkeys(s["hardware"] for s in run["sessions"]))
            rendered = self.renders(self.teacher_recipe) and self.renders(self.student_recipe)
            run["train"] = (
                {"rendered": True}
                if rendered
                else {"n": self.n_train, "seed": 0, "width": 448, "height": 448}
            )
            run["val"] = {"n": self.n_val, "seed": 1000}
            run["val_448"] = {"n": self.n_val, "seed": 1000, "width": 448, "height": 448}
            run["max_new_tokens"] = 512
            run["commands"] = list(dict.fromkeys([*run.get("commands", []), self.invocation.strip()]))
        else:
            run["finished"] = now
        path.write_text(json.dumps(run, indent=2))

    # ------------------------------------------------------------------------------------------ the chain

    def train(self) -> None:
        """Start the chain, or go on where it stopped."""
        self.run.mkdir(parents=True, exist_ok=True)
        self.adopt_record()
        self.record("started")
        self.synth_val()
        if self.student_only and not self.path("teacher", "model").is_dir():
            self.adopt_annealed_teacher()
        if not self.student_only:
            self.train_teacher()
        if self.teacher_only:
            return
        self.distil()
        self.evaluate_both(self.path("teacher"))
        self.evaluate_both(self.path("student"))
        self.record("finished")
        print(
            f"done: {self.path('teacher', 'model')}, {self.path('student', 'model')} "
            f"(report: {self.path('student', 'report.md')})"
        )
        print(f"ship them: donut-hole ship --run {self.run} --models models --readme README.md")

    def anneal_only(self, steps: int) -> None:
        """What the teacher reads now: an annealed copy of its newest checkpoint, evaluated."""
        self.run.mkdir(parents=True, exist_ok=True)
        self.record("started")
        self.synth_val()
        self.anneal(steps)

    def adopt_record(self) -> None:
        """A run that goes on from a committed checkpoint goes on with its record (sessions, hardware,
        commands): the student's when this run distils one, else the teacher's."""
        assert self.student_keep is not None
        if self.path("run.json").is_file() or not self.from_kept:
            return
        for keep in ([self.student_keep] if self.student_only else []) + [self.keep]:
            if (keep / "run.json").is_file():
                shutil.copy2(keep / "run.json", self.path("run.json"))
                return

    def adopt_annealed_teacher(self) -> None:
        """No teacher in this run: the committed annealed one (the shipped teacher)."""
        annealed = self.keep / "annealed"
        if not (annealed.is_dir() and self.from_kept):
            return
        teacher = self.path("teacher")
        teacher.mkdir(parents=True, exist_ok=True)
        shutil.copytree(annealed, teacher / "model")
        for name in ("history.jsonl", "recipe.yaml"):  # how it was trained, for its model card
            if (self.keep / name).is_file():
                shutil.copy2(self.keep / name, teacher / name)
        for name in ("evaluation.json", "evaluation-448.json", "anneal.json"):  # its scores, newer than it
            if (teacher / "model" / name).is_file():
                shutil.move(teacher / "model" / name, teacher / name)
                (teacher / name).touch()

    def train_teacher(self) -> None:
        data: list[str] = []
        if self.renders(self.teacher_recipe):  # rendered on the fly: no training folder
            kept = self.keep / CHECKPOINT
            if not self.path("teacher", CHECKPOINT).is_file() and kept.is_file() and self.from_kept:
                self.path("teacher").mkdir(parents=True, exist_ok=True)  # go on from the kept checkpoint
                for name in (CHECKPOINT, "history.jsonl", "train_log.jsonl"):
                    shutil.copy2(self.keep / name, self.path("teacher", name))
        else:
            data = self.synth_train()
        options: list[str] = []
        if self.init:
            options += ["--set", f"init={self.init}", "--set", "train.seed=1"]  # a new batch order
        if self.teacher_seconds:
            options += ["--set", f"train.time_limit_s={self.teacher_seconds:g}"]
        self.call(
            "train",
            "--recipe",
            str(self.teacher_recipe),
            *data,
            "--val",
            str(self.path("val")),
            "--out",
            str(self.path("teacher")),
            "--resume",
            *options,
            *self.extra,
        )
        if self.anneal_steps:  # the teacher that ships is the annealed copy
            self.anneal(self.anneal_steps)
            shutil.rmtree(self.path("teacher", "model"), ignore_errors=True)
            shutil.copytree(self.path("anneal", "model"), self.path("teacher", "model"))
            for name in ("evaluation.json", "evaluation-448.json", "anneal.json"):
                shutil.copy2(self.path("anneal", name), self.path("teacher", name))

    def distil(self) -> None:
        assert self.student_keep is not None
        data = [] if self.renders(self.student_recipe) else self.synth_train()
        student = self.path("student")
        kept = self.student_keep / CHECKPOINT
        if not (student / CHECKPOINT).is_file() and kept.is_file() and self.from_kept:
            student.mkdir(parents=True, exist_ok=True)  # go on from the kept distillation
            for name in (CHECKPOINT, "train_log.jsonl", "history.jsonl"):
                if (self.student_keep / name).is_file():
                    shutil.copy2(self.student_keep / name, student / name)
        report, weights = student / "report.json", student / "model" / "model.safetensors"
        if report.is_file() and weights.is_file() and report.stat().st_mtime > weights.stat().st_mtime:
            return  # a finished student (its report written after its model) is not distilled again
        options = ["--set", f"train.time_limit_s={self.student_seconds:g}"] if self.student_seconds else []
        self.call(
            "compress",
            "--teacher",
            str(self.path("teacher", "model")),
            "--recipe",
            str(self.student_recipe),
            *data,
            "--val",
            str(self.path("val-pages")),
            "--out",
            str(student),
            "--resume",
            *options,
            *self.extra,
        )

    def save(self) -> list[Path]:
        """Keep the teacher's run and a distillation under way in ``checkpoints/`` (curves, logs, the run's
        record, the finished model; the resumable ``checkpoint.pt`` beside them, not committed)."""
        from donut_hole.compression.curve import plot_curve, write_curve_table

        assert self.student_keep is not None
        kept: list[Path] = []
        teacher, student = self.path("teacher"), self.path("student")
        if (teacher / CHECKPOINT).is_file():
            self._copy(teacher, self.keep, [CHECKPOINT, "history.jsonl", "train_log.jsonl", "recipe.yaml"])
            kept.append(self.keep)
        report, checkpoint = student / "report.json", student / CHECKPOINT
        finished = (
            report.is_file() and checkpoint.is_file() and report.stat().st_mtime > checkpoint.stat().st_mtime
        )
        if checkpoint.is_file() and (self.student_only or not finished):
            self._copy(
                student, self.student_keep, [CHECKPOINT, "train_log.jsonl", "recipe.yaml", "history.jsonl"]
            )
            if finished:  # the model and what was measured
                shutil.rmtree(self.student_keep / "model", ignore_errors=True)
                shutil.copytree(student / "model", self.student_keep / "model")
                names = ["report.json", "report.md", *(p.name for p in student.glob("evaluation*.json"))]
                self._copy(student, self.student_keep, names)
            kept.append(self.student_keep)
        if not kept:
            raise ChainError(f"nothing to keep: no checkpoint in {teacher} or {student}")
        for folder in kept:
            if (self.path("run.json")).is_file():
                shutil.copy2(self.path("run.json"), folder / "run.json")
            if (folder / "history.jsonl").is_file():  # the curve, and its table in the folder's README
                plot_curve(folder / "history.jsonl", folder / "curve.png")
                readme = folder / "README.md"
                if readme.is_file() and "<!-- curve:start -->" in readme.read_text(encoding="utf-8"):
                    write_curve_table(folder / "history.jsonl", readme)
        return kept

    @staticmethod
    def _copy(source: Path, target: Path, names: Sequence[str]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
