"""Read documents: image loading, DONUT preprocessing, batched greedy generation, JSON parsing.

One entry point serves the worker and the evaluator alike::

    reader = DonutReader.from_path("models/donut-hole-small")
    reader.predict([Path("label.jpg"), png_bytes])        # -> [{"tracking_number": ...}, {...}]
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import platform
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.model import decoding, engine, locate, swin
from donut_hole.model.build import ModelLoadError, encoder_stride, load_model, task_token_of
from donut_hole.model.confidence import Calibration, load_calibration
from donut_hole.model.pixels import pixels_of
from donut_hole.model.tokens import token2json
from donut_hole.scans import (
    DEFAULT_MAX_PIXELS,
    ImageInput,
    inspect_source,
    load_image,
    load_page,
    read_source,
)

Key = TypeVar("Key")

BF16_REFUSED = (
    "precision bf16 needs a GPU or a CPU with AVX512-BF16/AMX, and this CPU has neither "
    "(it would run slower than fp32); use fp32 or int8"
)

CPU_CELLS_BUDGET = 4 << 20
"""Bytes of running pages' cross-attention keys and values the engine keeps on a CPU (at least one page)
when its steps run in the native kernel. On this project's 2-core EPYC one 672x672 page of the 4-layer
teacher holds 7.2 MB (fp32) and a step read 0.32 ms per page alone against 0.67-0.82 at 4 or 8 pages a
step: the pages' cells then no longer stay in the cache between steps, while the kernel's fixed cost per
step is small (``benchmarks/engine.py``). PyTorch's steps, whose fixed cost is large, run every row."""

PRECISIONS = ("fp32", "bf16", "int8")
"""fp32: as trained; bf16: GPUs, CPUs with AVX512-BF16/AMX; int8: dynamic quantisation of Linears (CPU)."""


@dataclass
class Prediction:
    """One document's reading: parsed fields, the raw sequence and how sure the model was."""

    data: dict[str, Any]
    sequence: str
    confidence: float  # geometric mean of the chosen tokens' probabilities, in [0, 1]; halved when cut
    token_probs: list[float] = field(default_factory=list)
    cut: bool = False  # the reading reached the token limit before the model ended it: fields may be missing
    token_ids: list[int] = field(default_factory=list)  # the chosen tokens, EOS included when it came
    # where each chosen token was read, in the model's input pixels, and the attention mass there
    # (x, y, mass): with ``DonutReader.locate``
    points: list[tuple[float, float, float]] | None = None

    @property
    def note(self) -> str | None:
        """What a reader of the fields should know, or ``None``: a cut reading says so."""
        return CUT_NOTE if self.cut else None


CUT_NOTE = "cut: the reading reached the longest answer the model can write before the document ended"
FALLBACK_MAX_NEW_TOKENS = 512  # a decoder that does not say how many positions it learned


@dataclass
class Timings:
    """Seconds spent per stage of the last call (for benchmarks and worker metrics)."""

    preprocess_s: float = 0.0
    encode_s: float = 0.0
    generate_s: float = 0.0


class DonutReader:
    """A loaded DONUT and the one way to run it: images in, parsed documents out."""

    def __init__(
        self,
        model: VisionEncoderDecoderModel,
        processor: DonutProcessor,
        *,
        max_new_tokens: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        task_token: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        # the prompt plus the new tokens must fit the decoder's learned positions (cord-v2: 768; ours: 640);
        # by default a reading may use all of them: it ends at the model's EOS, and a cut is flagged
        positions = getattr(model.config.decoder, "max_position_embeddings", None)
        limit = int(positions) - 1 if positions else FALLBACK_MAX_NEW_TOKENS
        self.max_new_tokens = max(1, min(max_new_tokens or limit, limit))
        self.max_pixels = max_pixels
        self.task_token = task_token or task_token_of(model, processor)
        self.device = next(model.parameters()).device
        size = processor.image_processor.size
        self.image_size = (int(size["height"]), int(size["width"]))
        self._pixels = pixels_of(processor.image_processor)
        self.timings = Timings()
        self.precision = "fp32"
        self._weights: engine.DecoderWeights | None = None  # the engine's packing of the decoder
        self._weights_version: tuple[tuple[int, int], ...] = ()
        # bf16 on a CPU (see from_path): the encoder's arithmetic and the cells the decoder reads in bf16
        self.encoder_autocast: torch.dtype | None = None
        self.cells_dtype: torch.dtype | None = None
        # the engine keeps the running pages' cells within this many bytes where it can (CPU: cache-sized)
        self.cells_budget: int | None = CPU_CELLS_BUDGET if self.device.type == "cpu" else None
        # where each token was read (Prediction.points): one teacher-forced pass of the decoder per page
        self.locate = False
        self.stride = encoder_stride(model.config.encoder)
        # the model folder's calibration of field confidences (None: raw token probabilities)
        self.calibration: Calibration | None = None

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        task_prompt: str | None = None,
        **kwargs: Any,
    ) -> DonutReader:
        """Load a model folder for reading; every failure is a :class:`ModelLoadError` with one line."""
        device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ModelLoadError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        # fp32 and int8 start from fp32 weights whatever the folder stores (checkpoints may be kept in bf16);
        # bf16 on a CPU too, where the engine reads: then only the encoder's arithmetic (autocast) and the
        # cells the decoder attends to are bf16, the decoder's small steps stay fp32 (they are not faster
        # in bf16 on a CPU)
        mixed = precision == "bf16" and device == "cpu"
        if mixed and not cpu_has_bf16():
            raise ModelLoadError(BF16_REFUSED)
        dtype = torch.bfloat16 if precision == "bf16" and not mixed else torch.float32
        model, processor = load_model(path, device=device, dtype=dtype, task_prompt=task_prompt)
        reader = cls(model, processor, **kwargs)
        if mixed and reader.engine_ready():
            reader.encoder_autocast = reader.cells_dtype = torch.bfloat16
        elif precision != "fp32":
            reader = cls(apply_precision(model, precision, device=device), processor, **kwargs)
        if precision == "fp32" and device == "cpu":
            swin.speed_up(model.encoder)  # this reader's own copy: inference only
        reader.precision = precision
        reader.calibration = load_calibration(path)
        return reader

    def load(self, source: ImageInput) -> Image.Image:
        return load_image(source, max_pixels=self.max_pixels, target_size=self.image_size)

    def load_page(self, data: bytes, *, page: int) -> Image.Image:
        """Page ``page`` of a PDF, a multi-frame image or a single image, sized for this model
        (:func:`donut_hole.scans.load_page`)."""
        align = bool(getattr(self.processor.image_processor, "do_align_long_axis", False))
        return load_page(
            data, page=page, target_size=self.image_size, max_pixels=self.max_pixels, align_long_axis=align
        )

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """DONUT preprocessing (resize to fit, pad, normalise): (B, 3, H, W) float tensor."""
        return self._pixels(images).to(self.device, dtype=self.model.dtype)

    def read_file(self, source: bytes | str | Path, *, batch_size: int = 8) -> list[Prediction]:
        """Every page of a scan: an image (one page), a PDF or a multi-page TIFF, as a path or its bytes;
        one :class:`Prediction` per page, in page order. A file or page that cannot be read raises
        :class:`~donut_hole.scans.DocumentError` with a reason for people."""
        data = read_source(source)
        pages = inspect_source(data).page_count
        return self.predict_detailed(
            [self.load_page(data, page=page) for page in range(1, pages + 1)], batch_size=batch_size
        )

    def predict(self, images: Sequence[ImageInput], *, batch_size: int = 8) -> list[dict[str, Any]]:
        """Parsed fields for each image; an unreadable image raises :class:`DocumentError`."""
        return [p.data for p in self.predict_detailed(images, batch_size=batch_size)]

    def predict_detailed(self, images: Sequence[ImageInput], *, batch_size: int = 8) -> list[Prediction]:
        """Each image's :class:`Prediction`, in order; ``batch_size`` pages decode together."""
        self.timings = Timings()
        if self.engine_ready():
            return self._in_order(self._loaded(images), len(images), slots=batch_size)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            t0 = time.perf_counter()
            decoded = [self.load(src) for src in images[start : start + batch_size]]
            pixels = self.pixel_values(decoded)
            self.timings.preprocess_s += time.perf_counter() - t0
            out.extend(self.generate(pixels))
        return out

    def engine_ready(self) -> bool:
        """Whether this model reads through :mod:`donut_hole.model.engine` (an mBART decoder read greedily
        as ``generate`` would): then :meth:`stream` shares its running batch between pages."""
        return _plain_greedy(self.model) and engine.supports(self.model.decoder)

    def stream(
        self, pages: Iterable[tuple[Key, torch.Tensor]], *, slots: int = 4
    ) -> Iterator[tuple[Key, Prediction]]:
        """Read ``(key, pixel_values (1, 3, H, W))`` pairs through one running batch of ``slots`` rows:
        a page takes a free row as soon as one frees, and each page's prediction comes out as soon as it
        is read (not in the order given). ``pages`` is drawn lazily, when a row is free. Needs
        :meth:`engine_ready`.

        >>> for key, prediction in reader.stream((p, reader.pixel_values([reader.load(p)])) for p in paths):
        ...     save(key, prediction.data)                                        # doctest: +SKIP
        """
        tokenizer = self.processor.tokenizer
        # packed once, again when the weights change (a model in training is read between its steps)
        version = tuple((p.data_ptr(), p._version) for p in self.model.decoder.parameters())
        if self._weights is None or self._weights_version != version:
            self._weights, self._weights_version = engine.DecoderWeights(self.model.decoder), version
        runner: engine.Engine[Key] = engine.Engine(
            self._weights,
            self._encode,
            start_id=tokenizer.convert_tokens_to_ids(self.task_token),
            eos_id=tokenizer.eos_token_id,
            unk_id=tokenizer.unk_token_id,
            forced_eos_id=self.model.generation_config.forced_eos_token_id,
            max_new_tokens=self.max_new_tokens,
            slots=slots,
            cells_dtype=self.cells_dtype,
            cells_budget=self.cells_budget,
            keep_cells=self.locate,
        )
        for key, read in runner.read(pages):
            prediction = self._parse_read(read.tokens, read.logps)
            if read.cells is not None:
                prediction.points = self.token_points(read.cells, prediction.token_ids)
            yield key, prediction

    def token_points(self, cells: torch.Tensor, token_ids: Sequence[int]) -> list[tuple[float, float, float]]:
        """Where each of ``token_ids`` was read (input pixels), from the decoder's last cross-attention over
        a page's ``cells`` (1, S, C) (:mod:`donut_hole.model.locate`)."""
        if not token_ids:
            return []
        start = self.processor.tokenizer.convert_tokens_to_ids(self.task_token)
        attention = locate.last_cross_attention(self.model.decoder, cells, [start, *token_ids[:-1]])
        grid = (-(-self.image_size[0] // self.stride), -(-self.image_size[1] // self.stride))
        return locate.token_points(attention, grid=grid, stride=self.stride)

    def _loaded(self, images: Sequence[ImageInput]) -> Iterator[tuple[int, torch.Tensor]]:
        for index, source in enumerate(images):
            t0 = time.perf_counter()
            pixels = self.pixel_values([self.load(source)])
            self.timings.preprocess_s += time.perf_counter() - t0
            yield index, pixels

    def _in_order(
        self, pages: Iterable[tuple[int, torch.Tensor]], count: int, *, slots: int
    ) -> list[Prediction]:
        t0, encode0, preprocess0 = time.perf_counter(), self.timings.encode_s, self.timings.preprocess_s
        out: list[Prediction | None] = [None] * count
        for index, prediction in self.stream(pages, slots=slots):
            out[index] = prediction
        encoding = self.timings.encode_s - encode0 + self.timings.preprocess_s - preprocess0
        self.timings.generate_s += time.perf_counter() - t0 - encoding
        return [p for p in out if p is not None]

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """A page's encoder cells at the decoder's width (1, S, C)."""
        t0 = time.perf_counter()
        if self.encoder_autocast is not None:
            with torch.autocast(pixel_values.device.type, dtype=self.encoder_autocast):
                hidden = self.model.encoder(pixel_values=pixel_values)[0].float()
        else:
            hidden = self.model.encoder(pixel_values=pixel_values)[0]
        hidden = self._at_decoder_width(hidden)
        if hidden.is_cuda:
            torch.cuda.synchronize()  # so that encode_s counts the encoder, not just its launch
        self.timings.encode_s += time.perf_counter() - t0
        return hidden

    def _at_decoder_width(self, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder's cells as the decoder's cross-attention takes them: through the model's projection
        when the encoder is of another width (projected once, not at every token)."""
        decoder = self.model.decoder
        if (
            self.model.encoder.config.hidden_size != decoder.config.hidden_size
            and getattr(decoder.config, "cross_attention_hidden_size", None) is None
        ):
            return self.model.enc_to_dec_proj(hidden)  # type: ignore[no-any-return]
        return hidden

    @torch.inference_mode()
    def generate(self, pixel_values: torch.Tensor) -> list[Prediction]:
        """Greedy decoding with a KV cache for a batch of preprocessed images (B, 3, H, W)."""
        batch = pixel_values.shape[0]
        if self.engine_ready():
            rows = ((row, pixel_values[row : row + 1]) for row in range(batch))
            return self._in_order(rows, batch, slots=batch)
        t0 = time.perf_counter()
        encoder_outputs = self.model.encoder(pixel_values=pixel_values)
        if pixel_values.is_cuda:
            torch.cuda.synchronize()  # so that encode_s counts the encoder, not just its launch
        t1 = time.perf_counter()
        tokenizer = self.processor.tokenizer
        start_id = tokenizer.convert_tokens_to_ids(self.task_token)
        prompt = torch.full((batch, 1), start_id, dtype=torch.long, device=self.device)  # (B, 1)
        if _plain_greedy(self.model):
            sequences, chosen = self._greedy(encoder_outputs, prompt)
        else:  # a generation config with its own logits processors: transformers' generate applies them
            result = self.model.generate(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=prompt,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bad_words_ids=[[tokenizer.unk_token_id]],
                return_dict_in_generate=True,
                output_scores=True,
            )
            sequences = result.sequences[:, 1:]  # (B, T) without the prompt
            scores = torch.stack(result.scores, dim=1).float()  # (B, T, V)
            chosen = torch.log_softmax(scores, dim=-1).gather(-1, sequences[:, : scores.shape[1], None])[
                ..., 0
            ]
        self.timings.encode_s += t1 - t0
        self.timings.generate_s += time.perf_counter() - t1
        out = [self._parse(seq, logp) for seq, logp in zip(sequences, chosen, strict=True)]
        if self.locate:
            cells = self._at_decoder_width(encoder_outputs[0])
            for row, prediction in enumerate(out):
                prediction.points = self.token_points(cells[row : row + 1], prediction.token_ids)
        return out

    def _greedy(self, encoder_outputs: Any, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding as ``generate`` does it here (the unknown token barred, a configured forced EOS
        at the last step, pad after EOS), without its per-token machinery: the same tokens and scores,
        faster for small decoders, where that machinery is a large part of a token's time.

        Returns the new tokens (B, T) and the log-probability of each chosen token (B, T).
        """
        from transformers import DynamicCache, EncoderDecoderCache

        tokenizer = self.processor.tokenizer
        eos, pad, unk = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id
        forced_eos = self.model.generation_config.forced_eos_token_id
        # the decoder itself, as VisionEncoderDecoderModel.forward calls it, without that wrapper's work at
        # every token
        decoder = self.model.decoder
        hidden = self._at_decoder_width(encoder_outputs[0])  # (B, S, C)
        if decoding.supports(decoder):  # the same modules without transformers' per-token machinery
            next_logits = decoding.MBartSteps(decoder, hidden).step
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            params = inspect.signature(decoder.forward).parameters
            cache_arg = "cache" if "cache" in params else "past_key_values"

            def next_logits(ids: torch.Tensor) -> torch.Tensor:
                kwargs = {cache_arg: cache}
                out = decoder(input_ids=ids, encoder_hidden_states=hidden, use_cache=True, **kwargs)
                return out.logits[:, -1]

        ids = prompt
        single = prompt.shape[0] == 1  # one document: no padding after its EOS to keep track of
        finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        tokens, logps = [], []
        for step in range(self.max_new_tokens):
            logits = next_logits(ids).float()  # (B, V)
            if unk is not None:
                logits[:, unk] = -math.inf
            if forced_eos is not None and step == self.max_new_tokens - 1:
                logits[:] = -math.inf
                logits[:, forced_eos] = 0.0
            best, chosen = logits.max(dim=-1)  # (B,): the first of equal maxima, as argmax
            logps.append(best - torch.logsumexp(logits, dim=-1))  # log_softmax of the chosen token
            if single:
                tokens.append(chosen)
                if int(chosen) == eos:
                    break
            else:
                chosen = chosen.masked_fill(finished, pad)
                tokens.append(chosen)
                finished |= chosen == eos
                if bool(finished.all()):
                    break
            ids = chosen[:, None]
        return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)

    def _parse(self, ids: torch.Tensor, logp: torch.Tensor) -> Prediction:
        return self._parse_read(ids.tolist(), logp.tolist())

    def _parse_read(self, ids_list: list[int], logps: list[float]) -> Prediction:
        tokenizer = self.processor.tokenizer
        eos = tokenizer.eos_token_id
        length = ids_list.index(eos) + 1 if eos in ids_list else len(ids_list)
        probs = [math.exp(logp) for logp in logps[:length]]
        text = tokenizer.decode(ids_list[:length], skip_special_tokens=False)
        text = text.replace(tokenizer.eos_token, "").replace(tokenizer.pad_token, "").strip()
        text = re.sub(r"^<s_[^>]*>", "", text, count=1) if text.startswith(self.task_token) else text
        confidence = math.exp(sum(math.log(max(p, 1e-12)) for p in probs) / len(probs)) if probs else 0.0
        # cut: no EOS, or the EOS that generation forces at the last step (not the model's choice)
        forced = self.model.generation_config.forced_eos_token_id is not None
        cut = eos not in ids_list or (forced and length >= self.max_new_tokens)
        if cut:
            confidence /= 2  # the fields read may be right, but the document was not read to its end
        return Prediction(
            data=token2json(text),
            sequence=text,
            confidence=confidence,
            token_probs=probs,
            cut=cut,
            token_ids=list(ids_list[:length]),
        )


# generation settings under which a plain greedy loop is not what ``generate`` would do (they add logits
# processors or stopping rules); a model whose generation config sets any of them is read with ``generate``
_GENERATE_ONLY = (
    "min_length",
    "min_new_tokens",
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "sequence_bias",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "exponential_decay_length_penalty",
    "renormalize_logits",
    "stop_strings",
    "max_time",
)


def _plain_greedy(model: VisionEncoderDecoderModel) -> bool:
    """Whether :meth:`DonutReader._greedy` reads ``model`` exactly as ``generate`` would."""
    from transformers import GenerationConfig

    config, default = model.generation_config, GenerationConfig()
    return all(getattr(config, key, None) == getattr(default, key, None) for key in _GENERATE_ONLY)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is a ModelLoadError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), as oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_cpu() -> str:
    """This CPU as speed figures should name it: model, vector unit (and bf16 arithmetic), cores.

    The vector unit sets a small model's pace as much as the clock: the same teacher read a page in 540 ms
    on an AVX512-BF16 EPYC and in 2,700 ms on an AVX2 one, so a latency without it cannot be compared.

    >>> describe_cpu()  # doctest: +SKIP
    'AMD EPYC 9B14 (AVX512 + bf16), 2 cores'
    """
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            models = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        name = models[0] if models else name
    unit = torch.backends.cpu.get_cpu_capability() + (" + bf16" if cpu_has_bf16() else "")
    return f"{name} ({unit}), {os.cpu_count()} cores"


def apply_precision(
    model: VisionEncoderDecoderModel, precision: str, *, device: str
) -> VisionEncoderDecoderModel:
    """The model at ``precision`` (:data:`PRECISIONS`); a choice this device cannot run: ModelLoadError.

    >>> apply_precision(model, "int8", device="cpu")  # doctest: +SKIP
    (Linear layers become dynamic qint8)
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    on_cpu = device == "cpu"
    if precision == "bf16":
        if on_cpu and not cpu_has_bf16():
            raise ModelLoadError(BF16_REFUSED)
        return model.to(torch.bfloat16)  # type: ignore[arg-type]  # .to() typed as decorated
    if precision == "int8":
        if not on_cpu:
            raise ModelLoadError(
                "precision int8 (dynamic quantisation) runs on the CPU only; on a GPU use bf16"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return quantized.eval()
    return model
