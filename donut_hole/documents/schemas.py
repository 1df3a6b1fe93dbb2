"""Pydantic models of the logistics documents DONUT-hole reads, and their registry.

Every value is a string: what is printed on the page, exactly as printed (``"12.5 kg"``, not ``12.5``).
A parse (DONUT's ``gt_parse`` or a model's prediction after ``token2json``) is one flat JSON object whose
``document_type`` key names its kind, beside the fields of that kind::

    {"document_type": "shipping_label", "carrier": "Atlas Parcel", "tracking_number": "1Z4F7A90312345678",
     "ship_to": {"name": "Maria Lopez", "street": "12 Mill Lane", "city": "Leeds", "postcode": "LS1 4AB"}}

Only each kind's identifying number is required (``tracking_number``, ``bol_number``, ``note_number``); a
reader that misses another field still yields a valid, partial document. Absent fields are left out of a
parse (never ``""`` or ``null``); :meth:`LogisticsDocument.gt_parse` writes that form. Unknown keys,
non-string values and empty strings are rejected with a :class:`SchemaError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

__all__ = [
    "DOCUMENT_TYPES",
    "BillOfLading",
    "DeliveryNote",
    "LogisticsDocument",
    "SchemaError",
    "ShippingLabel",
    "check_kind",
    "detect_kind",
    "validate_document",
]

Text = Annotated[str, StringConstraints(min_length=1)]
"""A printed value: any non-empty string."""


class SchemaError(ValueError):
    """A parse does not fit its document schema; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LogisticsDocument(_Part):
    """Base of every document type: a kind tag plus printed string fields."""

    kind: ClassVar[str]
    key_field: ClassVar[str]
    """The field that identifies a document of this kind (its number), always required."""

    def gt_parse(self) -> dict[str, Any]:
        """The parse as DONUT stores it: ``document_type`` first, absent fields left out."""
        return self.model_dump(exclude_none=True)


def _one_or_many(value: Any) -> Any:
    """DONUT's ``token2json`` turns a one-element list of objects into the object itself; undo that."""
    return [value] if isinstance(value, Mapping) else value


class Address(_Part):
    """A postal address block; ``street`` may hold a unit (``"Unit 4, 17 Quay Street"``)."""

    name: Text
    street: Text | None = None
    city: Text | None = None
    postcode: Text | None = None
    country: Text | None = None


class Party(_Part):
    """A party named on a bill of lading: a company and its city."""

    name: Text
    city: Text | None = None


class FreightItem(_Part):
    """One line of a bill of lading (``quantity`` as printed, e.g. ``"12 pallets"``)."""

    description: Text
    quantity: Text | None = None
    weight: Text | None = None


class DeliveryItem(_Part):
    """One line of a delivery note."""

    sku: Text | None = None
    description: Text
    quantity: Text | None = None


class ShippingLabel(LogisticsDocument):
    """A parcel label: carrier, service, tracking number, sender and recipient."""

    kind: ClassVar[str] = "shipping_label"
    key_field: ClassVar[str] = "tracking_number"

    document_type: Literal["shipping_label"] = "shipping_label"
    carrier: Text | None = None
    service: Text | None = None
    tracking_number: Text
    ship_from: Address | None = None
    ship_to: Address | None = None
    weight: Text | None = None
    date: Text | None = None
    reference: Text | None = None


class BillOfLading(LogisticsDocument):
    """A freight bill of lading: parties, carrier and the goods carried."""

    kind: ClassVar[str] = "bill_of_lading"
    key_field: ClassVar[str] = "bol_number"

    document_type: Literal["bill_of_lading"] = "bill_of_lading"
    bol_number: Text
    date: Text | None = None
    shipper: Party | None = None
    consignee: Party | None = None
    carrier: Text | None = None
    items: list[FreightItem] | None = None
    total_weight: Text | None = None

    _items_one_or_many = field_validator("items", mode="before")(_one_or_many)


class DeliveryNote(LogisticsDocument):
    """A delivery note (packing slip): customer, address, order and the goods delivered."""

    kind: ClassVar[str] = "delivery_note"
    key_field: ClassVar[str] = "note_number"

    document_type: Literal["delivery_note"] = "delivery_note"
    note_number: Text
    date: Text | None = None
    customer: Text | None = None
    delivery_address: Text | None = None
    order_number: Text | None = None
    items: list[DeliveryItem] | None = None

    _items_one_or_many = field_validator("items", mode="before")(_one_or_many)


DOCUMENT_TYPES: dict[str, type[LogisticsDocument]] = {
    model.kind: model for model in (ShippingLabel, BillOfLading, DeliveryNote)
}
"""Every known document kind, by the name used in ``document_type``."""


def check_kind(kind: object) -> str:
    """Return ``kind`` if it names a known document type; raise :class:`SchemaError` otherwise."""
    if not isinstance(kind, str) or kind not in DOCUMENT_TYPES:
        raise SchemaError(f"unknown document type {kind!r}; known types: {', '.join(DOCUMENT_TYPES)}")
    return kind


def detect_kind(data: Mapping[str, Any]) -> str:
    """The kind of a parse: its ``document_type``, or else the kind whose identifying field it holds.

    ``{"document_type": "bill_of_lading", ...}`` → ``"bill_of_lading"``;
    ``{"tracking_number": "1Z88899K2324252627"}`` → ``"shipping_label"``.
    """
    if "document_type" in data:
        return check_kind(data["document_type"])
    found = [kind for kind, model in DOCUMENT_TYPES.items() if model.key_field in data]
    if len(found) != 1:
        keys = ", ".join(model.key_field for model in DOCUMENT_TYPES.values())
        raise SchemaError(
            f"cannot tell the document type: no 'document_type' key and not exactly one of {keys}"
        )
    return found[0]


def _reason(kind: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(step) for step in item["loc"]) or "(document)"
        parts.append(f"{where}: {item['msg']}")
    return f"{kind}: " + "; ".join(parts)


def validate_document(kind: str, data: Mapping[str, Any]) -> LogisticsDocument:
    """Validate a parse as a document of ``kind``; raise :class:`SchemaError` with a readable reason.

    ``data`` may omit ``document_type``; when present it must equal ``kind``.
    """
    model = DOCUMENT_TYPES[check_kind(kind)]
    if not isinstance(data, Mapping):
        raise SchemaError(f"{kind}: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        raise SchemaError(_reason(kind, error)) from None


def schema_note(data: dict[str, Any]) -> str | None:
    """``None`` when a parse is a valid document of its kind, else ``"schema: <readable reason>"``.

    >>> note = schema_note({"document_type": "shipping_label", "carrier": "DHL"})
    >>> note.startswith("schema: shipping_label"), schema_note({"text_sequence": "x"})[:33]
    (True, 'schema: cannot tell the document ')
    """
    try:
        validate_document(detect_kind(data), data)
    except SchemaError as exc:
        return f"schema: {exc.reason}"
    return None
