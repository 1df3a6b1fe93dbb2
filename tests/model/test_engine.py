"""The decoding engine reads as transformers' ``generate`` does: the shipped teacher on real synthetic pages,
one page at a time and with pages entering and leaving a running batch, by the native step and by its
PyTorch twin; and its native attention kernel against PyTorch's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from donut_hole.documents.synth import jpeg_round_trip, render_sample
from donut_hole.model import engine, kernels, predict
from donut_hole.model.predict import DonutReader

TEACHER = Path(__file__).parents[2] / "models" / "teacher-small"
KINDS = ("shipping_label", "delivery_note", "bill_of_lading")


@pytest.fixture(scope="module")
def teacher() -> DonutReader:
    return DonutReader.from_path(TEACHER, max_new_tokens=512)


@pytest.fixture(scope="module")
def pages(teacher: DonutReader) -> list[torch.Tensor]:
    """Five unseen scans of the three kinds in their own page shapes, as the reader preprocesses them."""
    images = [jpeg_round_trip(render_sample(KINDS[i % 3], seed=4242, index=i)) for i in range(5)]
    return [teacher.pixel_values([teacher.load(image)]) for image in images]


def _generate(reader: DonutReader, pixels: torch.Tensor) -> tuple[list[int], list[float]]:
    """transformers' greedy ``generate`` on one page: its new tokens (to EOS) and their log-probabilities."""
    tokenizer = reader.processor.tokenizer
    start = tokenizer.convert_tokens_to_ids(reader.task_token)
    with torch.inference_mode():
        out = reader.model.generate(
            pixel_values=pixels,
            decoder_input_ids=torch.tensor([[start]]),
            max_new_tokens=reader.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bad_words_ids=[[tokenizer.unk_token_id]],
            return_dict_in_generate=True,
            output_scores=True,
        )
    tokens = out.sequences[0, 1:].tolist()
    scores = torch.stack(out.scores, dim=1)[0].float().log_softmax(-1)
    return tokens, scores.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()


def _engine(
    reader: DonutReader, slots: int, *, native: bool = True, budget: int | None = None
) -> engine.Engine:
    tokenizer = reader.processor.tokenizer
    weights = engine.DecoderWeights(reader.model.decoder)
    if not native:
        weights.native = None
    return engine.Engine(
        weights,
        reader._encode,
        start_id=tokenizer.convert_tokens_to_ids(reader.task_token),
        eos_id=tokenizer.eos_token_id,
        unk_id=tokenizer.unk_token_id,
        max_new_tokens=reader.max_new_tokens,
        slots=slots,
        cells_budget=budget,
    )


def test_the_shipped_teacher_is_read_by_the_native_engine(teacher):
    assert teacher.engine_ready() and kernels.native()
    assert engine.DecoderWeights(teacher.model.decoder).native is not None


@pytest.mark.parametrize(("slots", "native"), [(1, True), (3, True), (2, False)])
@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_pages_read_as_generate_reads_each_alone(teacher, pages, slots, native):
    """Each page's tokens equal ``generate``'s on that page alone and its log-probabilities agree, whether
    it decoded alone or beside others that entered and left the running batch at other positions."""
    runner = _engine(teacher, slots, native=native)
    reads = dict(runner.read(enumerate(pages)))
    assert sorted(reads) == list(range(len(pages)))
    if slots > 1:  # rows were shared: more rows than one per step on average
        assert runner.row_steps > runner.steps
    for index, pixels in enumerate(pages):
        tokens, logps = _generate(teacher, pixels)
        read = reads[index]
        assert read.tokens == tokens, f"page {index}"
        assert read.logps == pytest.approx(logps, abs=2e-4)
        assert not read.hit_limit and tokens[-1] == teacher.processor.tokenizer.eos_token_id


def test_pages_come_out_as_they_end_and_the_batch_refills(teacher, pages):
    """With 2 rows, the shortest of the first two pages comes out first and a waiting page takes its row
    at once (not after the longer one ended)."""
    lengths = [len(_engine(teacher, 1).read([(0, p)]).__next__()[1].tokens) for p in pages[:3]]
    order = [key for key, _ in _engine(teacher, 2).read(enumerate(pages[:3]))]
    first = 0 if lengths[0] < lengths[1] else 1
    assert order[0] == first
    assert order.index(2) < order.index(1 - first) or lengths[2] + lengths[first] > lengths[1 - first]


def test_a_read_that_reaches_the_token_limit_is_flagged(teacher, pages):
    teacher_short = DonutReader(teacher.model, teacher.processor, max_new_tokens=20)
    (_, read), *_ = _engine(teacher_short, 1).read([(0, pages[2])])
    assert read.hit_limit and len(read.tokens) == 20


def test_the_cells_budget_keeps_one_row_per_large_page(teacher, pages):
    """On a CPU the reader keeps the running pages' cells within a cache-sized budget: one 672x672 page of
    the teacher (7.2 MB of keys and values) per step, whatever the batch size asked."""
    runner = _engine(teacher, 4, budget=predict.CPU_CELLS_BUDGET)
    list(runner.read(enumerate(pages[:2])))
    assert runner.row_steps == runner.steps  # one row at a time
    assert teacher.predict_detailed(pages_as_images(teacher, 2), batch_size=4)[0].data


def test_pytorch_steps_share_rows_whatever_the_cells_budget(teacher, pages):
    """Without the native kernel a step's fixed cost is large: the budget does not apply, rows are shared."""
    runner = _engine(teacher, 2, native=False, budget=predict.CPU_CELLS_BUDGET)
    list(runner.read(enumerate(pages[:2])))
    assert runner.row_steps > runner.steps


def pages_as_images(reader: DonutReader, n: int) -> list:
    return [reader.load(jpeg_round_trip(render_sample(KINDS[i % 3], seed=4242, index=i))) for i in range(n)]


def test_the_reader_streams_predictions_as_pages_end(teacher, pages):
    got = dict(teacher.stream(enumerate(pages[:3]), slots=2))
    assert sorted(got) == [0, 1, 2]
    assert all(0.9 < prediction.confidence <= 1.0 for prediction in got.values())
    assert got[0].data.get("document_type") == "shipping_label"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("groups", "cells", "dim"), [(1, 1, 8), (3, 70, 32), (8, 1764, 32), (2, 129, 64)])
def test_the_attention_kernel_matches_pytorch(dtype, groups, cells, dim):
    torch.manual_seed(groups * cells + dim)
    q = torch.randn(groups, dim)
    keys = torch.randn(groups, dim, cells).to(dtype)
    values = torch.randn(groups, cells, dim).to(dtype)
    scale = 1 / math.sqrt(dim)
    expected = (torch.softmax((q[:, None] @ keys.float()) * scale, -1) @ values.float())[:, 0]
    assert kernels.native()
    assert torch.allclose(kernels.attend(q, keys, values, scale), expected, atol=1e-5, rtol=1e-4)


def test_bf16_on_a_cpu_reads_the_encoder_and_cells_in_bf16(pages):
    if not predict.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 arithmetic")
    reader = DonutReader.from_path(TEACHER, precision="bf16", max_new_tokens=512)
    assert reader.encoder_autocast == torch.bfloat16 and reader.cells_dtype == torch.bfloat16
    assert next(reader.model.parameters()).dtype == torch.float32  # the decoder's steps stay fp32
    fp32 = DonutReader.from_path(TEACHER, max_new_tokens=512)
    (_, mixed), *_ = reader.stream([(0, pages[0])], slots=1)
    (_, exact), *_ = fp32.stream([(0, pages[0])], slots=1)
    assert mixed.data == exact.data


def test_the_faster_encoder_forward_gives_the_encoders_cells(pages):
    """A reader's fp32 encoder runs the fused MLP and window attention: the same cells up to float rounding;
    with gradients on (a model in training) or under autocast, transformers' own forward runs."""
    from donut_hole.model import swin
    from donut_hole.model.build import load_model

    model, _ = load_model(TEACHER)
    stock, _ = load_model(TEACHER)
    assert swin.speed_up(model.encoder) == 12  # 6 blocks: MLP and window attention each
    with torch.inference_mode():
        for pixels in pages[:2]:
            fast, expected = model.encoder(pixel_values=pixels)[0], stock.encoder(pixel_values=pixels)[0]
            assert torch.allclose(fast, expected, atol=1e-4)
    with torch.enable_grad():
        trained = model.encoder(pixel_values=pages[0])[0]
        assert trained.requires_grad  # the stock forward, whose graph training needs


def test_pytorch_steps_never_depend_on_unset_cache_memory(teacher, pages, monkeypatch):
    """The PyTorch steps read a row's self-attention cache past its length (masked); memory that was never
    written must not matter, even where it holds NaN (as ``torch.empty`` may give)."""
    expected = {key: read.tokens for key, read in _engine(teacher, 1).read(enumerate(pages[:3]))}
    empty = torch.empty

    def poisoned(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", poisoned)
    got = {key: read.tokens for key, read in _engine(teacher, 2, native=False).read(enumerate(pages[:3]))}
    assert got == expected
