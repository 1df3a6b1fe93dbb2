from __future__ import annotations

import random
from typing import Any

import pytest

from donut_hole.documents import (
    DOCUMENT_TYPES,
    BillOfLading,
    SchemaError,
    ShippingLabel,
    detect_kind,
    sample_document,
    validate_document,
)

KINDS = sorted(DOCUMENT_TYPES)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_documents_validate_and_round_trip(kind: str) -> None:
    rng = random.Random(7)
    for _ in range(20):
        gt = sample_document(kind, rng)
        assert gt["document_type"] == kind
        assert detect_kind(gt) == kind
        doc = validate_document(kind, gt)
        assert isinstance(doc, DOCUMENT_TYPES[kind])
        assert doc.gt_parse() == gt


def test_gt_parse_puts_document_type_first_and_drops_absent_fields() -> None:
    doc = validate_document("shipping_label", {"tracking_number": "1Z88899K2324252627", "carrier": "UPS"})
    assert doc.gt_parse() == {
        "document_type": "shipping_label",
        "carrier": "UPS",
        "tracking_number": "1Z88899K2324252627",
    }


def test_only_the_identifying_number_is_required() -> None:
    assert isinstance(validate_document("bill_of_lading", {"bol_number": "BL1"}), BillOfLading)
    with pytest.raises(SchemaError, match=r"bill_of_lading: bol_number: Field required"):
        validate_document("bill_of_lading", {"date": "2024-01-01"})


def test_single_item_object_is_read_as_a_list() -> None:
    # DONUT's token2json collapses a one-element list of objects into the object.
    doc = validate_document(
        "delivery_note",
        {"note_number": "DN-1", "items": {"sku": "A-1", "description": "Bolts", "quantity": "3"}},
    )
    assert doc.gt_parse()["items"] == [{"sku": "A-1", "description": "Bolts", "quantity": "3"}]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"tracking_number": 123}, r"tracking_number: Input should be a valid string"),
        ({"tracking_number": ""}, r"tracking_number: String should have at least 1 character"),
        ({"tracking_number": "X", "colour": "red"}, r"colour: Extra inputs are not permitted"),
        ({"tracking_number": "X", "ship_to": {"city": "Leeds"}}, r"ship_to.name: Field required"),
        ({"tracking_number": "X", "ship_to": "Leeds"}, r"ship_to: Input should be a valid dictionary"),
        ({"document_type": "bill_of_lading", "tracking_number": "X"}, r"document_type: Input should be"),
    ],
)
def test_bad_input_is_rejected_with_a_readable_reason(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(SchemaError, match=reason) as info:
        validate_document("shipping_label", data)
    assert isinstance(info.value, ValueError)
    assert info.value.reason.startswith("shipping_label: ")


def test_item_errors_name_the_item() -> None:
    with pytest.raises(SchemaError, match=r"items\.1\.description: Field required"):
        validate_document(
            "bill_of_lading", {"bol_number": "B", "items": [{"description": "a"}, {"weight": "1 kg"}]}
        )


def test_unknown_kind_and_non_object_are_rejected() -> None:
    with pytest.raises(SchemaError, match=r"unknown document type 'invoice'; known types: .*shipping_label"):
        validate_document("invoice", {})
    with pytest.raises(SchemaError, match=r"expected a JSON object, got list"):
        validate_document("shipping_label", [])  # type: ignore[arg-type]


def test_detect_kind() -> None:
    assert detect_kind({"document_type": "delivery_note"}) == "delivery_note"
    # The real scans in shared/data carry no document_type; their tracking number tells the kind.
    assert (
        detect_kind({"tracking_number": "1Z88899K2324252627", "reference": "CA 859 2-37"}) == "shipping_label"
    )
    assert detect_kind({"bol_number": "B"}) == "bill_of_lading"
    with pytest.raises(SchemaError, match="unknown document type"):
        detect_kind({"document_type": "menu"})
    with pytest.raises(SchemaError, match="cannot tell the document type"):
        detect_kind({"text_sequence": "garbage"})
    with pytest.raises(SchemaError, match="cannot tell the document type"):
        detect_kind({"tracking_number": "1", "note_number": "2"})


def test_models_are_immutable() -> None:
    doc = ShippingLabel(tracking_number="X")
    with pytest.raises(ValueError, match="frozen"):
        doc.tracking_number = "Y"  # type: ignore[misc]
