"""Small native kernels for the decoding engine, built on this machine at first use.

One kernel so far, ``attend.c``: single-query attention over a page's cells, one pass over the keys and
one over the values, with keys and values in float32 or bfloat16 (PyTorch has no fast CPU path for either
at one query per head: its matrix products read the keys and values at about half this speed at 4 pages,
and its bfloat16 products are slower than its float32 ones). It is compiled with the system's C compiler
(``$CC``, else ``cc``) for this CPU (``-march=native``) into a cache folder keyed by the source, the
compiler and the CPU, so each machine builds it once (about a second). Where there is no compiler, or
``DONUT_HOLE_NATIVE_KERNELS=false``, :func:`attend` computes the same with PyTorch.

>>> out = attend(q, keys, values, scale)  # (G, D) from (G, D), (G, D, S), (G, S, D)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("attend.c")
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False


def env_flag(name: str) -> bool:
    """A boolean setting read where the settings are not (true unless 0, false, no or off)."""
    return os.environ.get(name, "true").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    """``$DONUT_HOLE_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/donut-hole/kernels`` (``~/.cache`` by default)."""
    if os.environ.get("DONUT_HOLE_KERNEL_CACHE"):
        return Path(os.environ["DONUT_HOLE_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "donut-hole" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL | None:
    """The kernel library, from the cache or built now; None where it cannot be built or loaded."""
    if not env_flag("DONUT_HOLE_NATIVE_KERNELS"):
        return None
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.info("no C compiler (%s): the engine's attention runs in PyTorch", compiler)
        return None
    flags = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC"]
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), compiler, version, " ".join(flags), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"attend-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                built = Path(scratch) / target.name
                result = subprocess.run(
                    [compiler, *flags, "-o", str(built), str(_SOURCE), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if result.returncode != 0:
                    log.warning(
                        "the attention kernel did not build; PyTorch runs it: %s", result.stderr[-500:]
                    )
                    return None
                os.replace(built, target)  # atomic: processes building at once each get a whole library
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("the attention kernel did not build (%s); PyTorch runs it", error)
            return None
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        log.warning("the attention kernel did not load (%s); PyTorch runs it", error)
        return None
    for function in (library.attend_f32, library.attend_bf16):
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_float]
        function.restype = ctypes.c_int
    pointer, size, real, flag = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    library.decoder_layers.argtypes = [
        pointer,
        size,
        pointer,
        *[size] * 7,
        *[real] * 3,
        flag,
        pointer,
        pointer,
        pointer,
        flag,
    ]
    library.decoder_layers.restype = ctypes.c_int
    return library


def library() -> ctypes.CDLL | None:
    """The built kernels (built at the first call), or None: then :func:`attend` uses PyTorch."""
    global _library, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _library = _build()
                _tried = True
    return _library


def native() -> bool:
    """Whether :func:`attend` runs the native kernel here."""
    return library() is not None


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q Kᵀ) V for G independent (row, head) groups of one query each.

    ``q`` (G, D) float32; ``keys`` (G, D, S) (stored transposed) and ``values`` (G, S, D), both float32 or
    both bfloat16, contiguous, on the CPU. Returns (G, D) float32.
    """
    lib = library()
    groups, dim = q.shape
    if lib is not None and keys.device.type == "cpu" and keys.dtype in (torch.float32, torch.bfloat16):
        q = q.contiguous().float()
        out = torch.empty(groups, dim, dtype=torch.float32)
        function = lib.attend_f32 if keys.dtype == torch.float32 else lib.attend_bf16
        status = function(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(),
            groups, keys.shape[-1], dim, scale,
        )  # fmt: skip
        if status == 0:
            return out
    scores = torch.matmul(q[:, None, :].to(keys.dtype), keys).float() * scale  # (G, 1, S)
    mixed = torch.matmul(scores.softmax(-1).to(values.dtype), values)  # (G, 1, D)
    return mixed[:, 0].float()
