"""Smoke test of ``benchmarks/models.py`` (the script, not a benchmark): ``--quick --preset tiny`` runs in a
subprocess and writes JSON with every variant and field; its pure helpers are checked on known values, and
its recommended student is the one ``donut-hole compress`` builds."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "models.py"
CPU_VARIANTS = ["teacher", "layers", "structured", "unstructured", "int8"]
GPU_VARIANTS = ["teacher-bf16", "bf16", "2:4"]
MODEL_FIELDS = [
    "parameters",
    "nonzero",
    "prunable_total",
    "prunable_nonzero",
    "density_prunable_vs_teacher",
    "density_all_vs_teacher",
    "weights_mb",
    "dtype",
]
RESULT_FIELDS = [
    "repeats",
    "encode_s",
    "generate_s",
    "total_s",
    "cpu_s",
    "docs_per_s",
    "ms_per_doc",
    "latency_p50_ms",
    "latency_p95_ms",
    "activation_peak_mb",
    "peak_mb",
    "speedup",
]


def load_script():
    """The script as a module; loading it puts the repository root on ``sys.path`` (for ``benchmarks``)."""
    spec = importlib.util.spec_from_file_location("benchmark_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def part(name: str) -> Any:
    """``benchmarks.students.<name>``, one of the script's modules."""
    load_script()
    return importlib.import_module(f"benchmarks.students.{name}")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "models.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--preset", "tiny", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| teacher |" in done.stdout  # the markdown table is printed
    assert out.with_suffix(".md").read_text(encoding="utf-8").startswith("# Teacher vs DONUT-hole")
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_quick_run_has_every_variant_and_field(quick):
    assert quick["complete"] is True
    assert list(quick["variants"]) == CPU_VARIANTS + GPU_VARIANTS
    for name in CPU_VARIANTS:
        variant = quick["variants"][name]
        assert variant["status"] == "ok", variant
        assert all(variant[f] is not None for f in MODEL_FIELDS), variant
    for name in GPU_VARIANTS:
        assert quick["variants"][name]["status"] == "skipped"
        assert "cuda" in quick["variants"][name]["reason"]
    configs = {(r["resolution"], r["batch_size"]) for r in quick["results"]}
    assert configs == {(res, b) for res in ("320x240", "256x192") for b in (1, 2)}
    for row in quick["results"]:
        assert row["status"] == "ok", row
        assert all(row[f] is not None for f in RESULT_FIELDS), row
        assert row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
        assert set(row["speedup"]) == set(CPU_VARIANTS) - {row["variant"]}
    assert {r["variant"] for r in quick["results"]} == set(CPU_VARIANTS)
    assert quick["weights_shared_across_resolutions"]["identical_shapes"] is True
    assert {t["config"] for t in quick["targets"]} == {r["config"] for r in quick["results"]}
    assert all(t["student"] == "structured" and "speedup_ok" in t for t in quick["targets"])
    assert quick["machine"]["load_average_start"] and quick["settings"]["memory_method"]


def test_quick_run_densities_follow_the_recipe(quick):
    v = quick["variants"]
    assert v["teacher"]["density_prunable_vs_teacher"] == 1.0
    for name in ("structured", "unstructured", "int8"):  # target 0.46 of the teacher's prunable weights
        assert v[name]["density_prunable_vs_teacher"] == pytest.approx(0.46, abs=1e-3)
    assert v["layers"]["parameters"] < v["teacher"]["parameters"]
    assert v["structured"]["parameters"] < v["layers"]["parameters"]  # FFN neurons removed
    assert v["unstructured"]["parameters"] == v["teacher"]["parameters"]  # zeros keep their shapes
    assert v["int8"]["weights_mb"] < v["structured"]["weights_mb"] / 2


def test_planner_and_percentile():
    m, repeats_for, percentile = load_script(), part("schedule").repeats_for, part("passes").percentile
    assert repeats_for(10, left_s=100, later_s=[50], repeats=3) == 3
    assert repeats_for(10, left_s=100, later_s=[85], repeats=3) == 1  # the rest is kept for the 85 s pass
    assert repeats_for(60, left_s=100, later_s=[50], repeats=3) == 1  # no room for the later one: still 1
    assert repeats_for(101, left_s=100, later_s=[], repeats=3) == 0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert m.parse_sizes("2560x1920,1280x960") == [(2560, 1920), (1280, 960)]
    with pytest.raises(m.BenchmarkError):
        m.parse_sizes("2560-1920")


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_vocabulary_pruned_student_generates_with_renumbered_ids(tmp_path):
    """A recipe with prune.vocabulary: the structured student keeps --vocab-rows rows and still generates."""
    recipe = tmp_path / "vocab.yaml"
    recipe.write_text(
        (ROOT / "configs" / "tiny.yaml")
        .read_text(encoding="utf-8")
        .replace("prune:\n", "prune:\n  vocabulary: true\n"),
        encoding="utf-8",
    )
    out = tmp_path / "models.json"
    args = ["--quick", "--preset", "tiny", "--variants", "teacher,structured", "--vocab-rows", "90"]
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *args,
            "--recipe",
            str(recipe),
            "--batch-sizes",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    structured = result["variants"]["structured"]
    assert any(note.startswith("vocabulary: 90 of ") for note in structured["notes"]), structured["notes"]
    assert result["settings"]["vocab_rows"] == 90
    assert all(row["status"] == "ok" for row in result["results"])


def test_benchmark_vocabulary_fills_up_to_the_requested_rows():
    m = part("variants")
    from donut_hole.model.build import new_model

    docs = [{"document_type": "shipping_label", "carrier": "Kestrel Cargo", "weight": "12 kg"}]
    _, processor = new_model("tiny", documents=docs)
    tok = processor.tokenizer
    kept, used = m.benchmark_vocabulary(tok, ["<s_logistics>Kestrel</s>"], rows=40, total=len(tok))
    assert len(kept) == 40 and kept == sorted(kept) and used < 40
    assert set(tok.all_special_ids) <= set(kept)
    everything, _ = m.benchmark_vocabulary(tok, ["Kestrel"], rows=10**6, total=len(tok))
    assert everything == list(range(len(tok)))


def test_the_recommended_student_is_the_one_compress_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    from donut_hole.compression.prune import magnitude_prune_
    from donut_hole.compression.recipe import CompressRecipe, load_recipe
    from donut_hole.compression.student import build_student
    from donut_hole.model.build import count_parameters, new_model

    variants = part("variants")
    recipe = load_recipe(ROOT / "configs" / "tiny.yaml", CompressRecipe)
    teacher, _ = new_model("tiny", documents=[{"document_type": "shipping_label", "carrier": "Kestrel"}])
    calls: list[CompressRecipe] = []

    def spy(model: Any, given: CompressRecipe) -> Any:
        calls.append(given)
        return build_student(model, given)

    monkeypatch.setattr(variants, "build_student", spy)
    built = variants.build_variants(
        teacher, recipe, device=torch.device("cpu"), names=["teacher", "structured"]
    )
    assert calls == [recipe]
    expected = build_student(teacher, recipe)
    magnitude_prune_(expected.model, density=expected.density, scope=recipe.prune.scope)
    structured = built[1].info
    assert structured["parameters"] == count_parameters(expected.model)
    assert structured["density_prunable_vs_teacher"] == pytest.approx(recipe.prune.target_density, abs=1e-3)
