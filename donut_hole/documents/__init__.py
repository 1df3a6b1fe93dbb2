"""What a logistics document is: schemas per document type and a seeded generator of synthetic scans.

A parse is one flat JSON object tagged with its kind::

    {"document_type": "shipping_label", "tracking_number": "1Z4F7A903123456789", "carrier": "UPS", ...}

- :mod:`.schemas`: pydantic models (:data:`DOCUMENT_TYPES`), :func:`validate_document`, :func:`detect_kind`.
- :mod:`.synth`: :func:`generate` writes DONUT's dataset format; :func:`sample_document` and :func:`render`
  make one document's values and image; :mod:`.values`, :mod:`.label`, :mod:`.forms` and :mod:`.canvas`
  are its parts.
"""

from typing import TYPE_CHECKING, Any

from donut_hole.documents.schemas import (
    DOCUMENT_TYPES,
    BillOfLading,
    DeliveryNote,
    LogisticsDocument,
    SchemaError,
    ShippingLabel,
    check_kind,
    detect_kind,
    validate_document,
)

if TYPE_CHECKING:
    from donut_hole.documents.synth import DEFAULT_SIZES, generate, render, sample_document

_SYNTH = ("DEFAULT_SIZES", "generate", "render", "sample_document")


def __getattr__(name: str) -> Any:
    """Load the generator (Pillow, numpy, fonts) on first use, so that validating stays a light import."""
    if name in _SYNTH:
        from donut_hole.documents import synth

        return getattr(synth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_SIZES",
    "DOCUMENT_TYPES",
    "BillOfLading",
    "DeliveryNote",
    "LogisticsDocument",
    "SchemaError",
    "ShippingLabel",
    "check_kind",
    "detect_kind",
    "generate",
    "render",
    "sample_document",
    "validate_document",
]
