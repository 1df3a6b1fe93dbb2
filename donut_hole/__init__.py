"""DONUT-hole: sparse DONUT students for reading scanned logistics documents at scale.

Read a scan from Python with :func:`read` (every page of an image, PDF or TIFF), or keep a
:class:`~donut_hole.model.predict.DonutReader` for many (``DonutReader.from_path(folder)``, then
``read_file``, ``predict_detailed``, ``stream``)::

    >>> import donut_hole
    >>> from donut_hole.documents.synth import generate
    >>> from donut_hole.evaluation.dataset import read_dataset
    >>> folder = generate("shipping_label", n=1, out=getfixture("tmp_path"), seed=3, progress=False)
    >>> (page,) = donut_hole.read(folder / "000000.jpg")          # the shipped DONUT-hole student
    >>> page.data["document_type"]
    'shipping_label'
    >>> page.data["tracking_number"] == read_dataset(folder)[0].gt_parse["tracking_number"]
    True
    >>> 0.9 < page.confidence <= 1.0 and page.note is None
    True
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from donut_hole.model.predict import DonutReader, Prediction

__version__ = "0.1.0"

_readers: dict[tuple[str, str, str, int | None], DonutReader] = {}
_lock = threading.Lock()


def read(
    source: bytes | str | Path,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    max_new_tokens: int | None = None,
) -> list[Prediction]:
    """Read every page of a scan (an image, a PDF or a multi-page TIFF; a path or its bytes).

    Returns one :class:`~donut_hole.model.predict.Prediction` per page: ``data`` (the fields as nested
    JSON), ``confidence``, ``note`` (``"cut: ..."`` when the reading reached the model's limit) and
    ``token_probs``. ``model`` is a model folder (default: ``DONUT_HOLE_MODEL_PATH``, the shipped
    DONUT-hole student); it is loaded once per process and kept. A file that cannot be read raises
    :class:`~donut_hole.scans.DocumentError`; a model folder that cannot be used,
    :class:`~donut_hole.model.build.ModelLoadError`, both with a reason for people.
    """
    return reader(model=model, device=device, precision=precision, max_new_tokens=max_new_tokens).read_file(
        source
    )


def reader(
    *,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    max_new_tokens: int | None = None,
) -> DonutReader:
    """The :class:`~donut_hole.model.predict.DonutReader` :func:`read` uses for these arguments, loaded on
    first use and kept for the process."""
    from donut_hole.model.predict import DonutReader
    from donut_hole.settings import get_settings

    folder = str(Path(model) if model is not None else get_settings().model_path)
    key = (folder, device, precision, max_new_tokens)
    with _lock:
        if key not in _readers:
            _readers[key] = DonutReader.from_path(
                folder, device=device, precision=precision, max_new_tokens=max_new_tokens
            )
        return _readers[key]
