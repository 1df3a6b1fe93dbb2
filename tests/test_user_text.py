"""What users read names no internal issue numbers: README files, help strings and docstrings, model
cards, recipe comments, scripts and deployment files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = re.compile(r"\bissues? \d+|\bissues? #\d+|\(#\d+\)", re.IGNORECASE)
PLACES = [
    "README.md",
    "CONTRIBUTING.md",
    "docs/*.md",
    "benchmarks/**/*.md",
    "benchmarks/**/*.py",
    "checkpoints/**/*.md",
    "configs/*.yaml",
    "deploy/**/*",
    "docker-compose.yml",
    "donut_hole/**/*.py",
    "models/**/*.md",
    "scripts/*.sh",
]


def test_no_internal_issue_numbers() -> None:
    files = sorted({path for pattern in PLACES for path in ROOT.glob(pattern) if path.is_file()})
    assert len(files) > 100
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert found == []
