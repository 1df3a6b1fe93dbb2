"""Seeded field values for synthetic logistics documents, from small built-in word lists (no Faker).

Values use a narrow character set (letters, digits, space and ``- . , / #``) and are drawn only from the
``random.Random`` passed in, so a seed fixes them. :func:`sample_document` returns a parse in the form
:mod:`donut_hole.documents.schemas` describes: ``{"document_type": kind, ...}``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

from donut_hole.documents.schemas import check_kind, validate_document

__all__ = ["CHARSET", "sample_document"]

CHARSET = frozenset(string.ascii_letters + string.digits + " -.,/#")
"""Every character a synthetic value may contain."""

FIRST_NAMES = (
    "Maria", "James", "Anna", "Lukas", "Sofia", "Oliver", "Emma", "Noah", "Julia", "Pierre", "Elena",
    "Tomasz", "Hannah", "David", "Chloe", "Mateo", "Ingrid", "Samuel", "Aisha", "Lars", "Grace", "Marco",
    "Nina", "Omar", "Claire", "Felix", "Yuki", "Rosa", "Peter", "Laura",
)  # fmt: skip
LAST_NAMES = (
    "Lopez", "Smith", "Novak", "Schmidt", "Rossi", "Dubois", "Jansen", "Kowalski", "Brown", "Meyer",
    "Garcia", "Larsen", "Walsh", "Moreau", "Bianchi", "Fischer", "Evans", "Nielsen", "Costa", "Byrne",
    "Wagner", "Patel", "Martin", "Keller", "Hughes", "Berg", "Silva", "Clarke", "Vogel", "Reed",
)  # fmt: skip
COMPANY_WORDS = (
    "Harbor", "Summit", "Northgate", "Bluestone", "Oakridge", "Riverside", "Granite", "Silverline",
    "Eastfield", "Redwood", "Pioneer", "Lakeside", "Ironbridge", "Westmark", "Crown",
    "Meadow", "Beacon", "Falcon",
)  # fmt: skip
COMPANY_TRADES = (
    "Tools", "Supply", "Foods", "Textiles", "Electronics", "Paper", "Plastics", "Metals", "Furniture",
    "Pharma", "Garden", "Auto Parts", "Packaging", "Hardware",
)  # fmt: skip
COMPANY_SUFFIXES = ("Ltd", "GmbH", "Inc.", "Co.", "LLC", "B.V.", "S.A.", "Group", "and Sons", "")
STREET_NAMES = (
    "Mill", "Oak", "Station", "Harbour", "Church", "Market", "King", "Bridge", "Park", "Victoria", "High",
    "Elm", "Canal", "Quay", "Linden", "Maple", "Forge", "Dock", "Orchard", "Chapel",
)  # fmt: skip
STREET_TYPES = ("Street", "Road", "Lane", "Avenue", "Way", "Drive", "Close", "St.", "Rd.", "Ave.")
# country -> (cities, postcode pattern: A = letter, 9 = digit, other characters literal)
COUNTRIES: dict[str, tuple[tuple[str, ...], str]] = {
    "United Kingdom": (("Leeds", "Bristol", "York", "Derby", "Norwich", "Glasgow", "Cardiff"), "AA9 9AA"),
    "Germany": (("Berlin", "Hamburg", "Bremen", "Kiel", "Mainz", "Leipzig", "Dresden"), "99999"),
    "France": (("Lyon", "Lille", "Nantes", "Rennes", "Toulouse", "Bordeaux"), "99999"),
    "Netherlands": (("Utrecht", "Leiden", "Delft", "Rotterdam", "Eindhoven"), "9999 AA"),
    "United States": (("Denver", "Austin", "Boston", "Portland", "Chicago", "Phoenix"), "99999"),
    "Canada": (("Toronto", "Calgary", "Ottawa", "Halifax", "Winnipeg"), "A9A 9A9"),
    "Poland": (("Gdansk", "Krakow", "Poznan", "Lodz", "Wroclaw"), "99-999"),
    "Spain": (("Madrid", "Valencia", "Sevilla", "Bilbao", "Malaga"), "99999"),
    "Italy": (("Milano", "Torino", "Bologna", "Verona", "Genova"), "99999"),
}
CARRIERS = (
    "UPS", "DHL Express", "FedEx", "DPD", "GLS", "PostNL", "Royal Mail", "USPS", "Atlas Parcel",
    "Northwind Express", "Bluebird Courier", "Kestrel Cargo", "Meridian Post", "Swift Lane Logistics",
)  # fmt: skip
FREIGHT_CARRIERS = (
    "Atlas Freight Lines", "Kestrel Cargo", "Northwind Haulage", "Ironroad Transport", "Maersk Logistics",
    "Blue Ridge Trucking", "Meridian Freight", "Schenker", "Polar Line Shipping",
)  # fmt: skip
SERVICES = (
    "Express", "Standard", "Economy", "Next Day", "2nd Day Air", "Ground", "Priority", "Express Saver",
    "Same Day", "Express 12.00", "Parcel Plus", "Tracked 48",
)  # fmt: skip
TRACKING_PATTERNS = ("1ZXXXXXX9999999999", "AA999999999AA", "999999999999", "JD999999999999999999",
                     "9999 9999 9999", "AA 9999 9999 9")  # fmt: skip
PRODUCTS = (
    "Steel brackets", "Cardboard boxes", "Bottled water", "Office chairs", "LED panels", "Copy paper A4",
    "Cable reels", "Ceramic tiles", "Garden hoses", "Cotton towels", "Paint tins 5L", "Bolts M8",
    "Plastic crates", "Laptop stands", "Wooden pallets", "Coffee beans", "Printer toner", "Safety gloves",
    "Glass jars", "Brake pads", "Air filters", "Desk lamps", "Shelving units", "Tinned tomatoes",
)  # fmt: skip
FREIGHT_UNITS = ("pallets", "cartons", "crates", "drums", "bags", "PLT", "CTN", "")
PIECE_UNITS = ("pcs", "boxes", "units", "ea", "")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def pattern(rng: random.Random, spec: str) -> str:
    """Fill a pattern: ``A`` → a capital letter, ``9`` → a digit, ``X`` → either; other characters kept.

    ``pattern(rng, "AA9 9AA")`` → e.g. ``"LS1 4AB"``.
    """
    pools = {"A": string.ascii_uppercase, "9": string.digits, "X": string.ascii_uppercase + string.digits}
    return "".join(rng.choice(pools[c]) if c in pools else c for c in spec)


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def company(rng: random.Random) -> str:
    name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_TRADES)} {rng.choice(COMPANY_SUFFIXES)}"
    return name.strip()


def street(rng: random.Random) -> str:
    line = f"{rng.randint(1, 240)} {rng.choice(STREET_NAMES)} {rng.choice(STREET_TYPES)}"
    roll = rng.random()
    if roll < 0.15:
        line = f"Unit {rng.randint(1, 40)}, {line}"
    elif roll < 0.25:
        line = f"{line} #{rng.randint(2, 60)}"
    return line


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(2021, 2026), rng.randint(1, 12), rng.randint(1, 28)
    forms = (f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}", f"{d:02d}.{m:02d}.{y}",
             f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1]} {d}, {y}")  # fmt: skip
    return rng.choice(forms)


def weight(rng: random.Random, *, low: float, high: float, unit: str) -> str:
    value = rng.uniform(low, high)
    return f"{value:.1f} {unit}" if value < 100 else f"{round(value):,} {unit}"


def address(rng: random.Random, *, upper: bool, with_country: bool) -> dict[str, str]:
    country = rng.choice(sorted(COUNTRIES))
    cities, postcode = COUNTRIES[country]
    name = person(rng) if rng.random() < 0.6 else company(rng)
    block = {
        "name": name,
        "street": street(rng),
        "city": rng.choice(cities),
        "postcode": pattern(rng, postcode),
    }
    if with_country:
        block["country"] = country
    return {key: value.upper() for key, value in block.items()} if upper else block


def shipping_label(rng: random.Random) -> dict[str, Any]:
    upper = rng.random() < 0.35
    unit = rng.choice(("kg", "kg", "lb", "KG", "LBS"))
    doc: dict[str, Any] = {
        "carrier": rng.choice(CARRIERS),
        "service": rng.choice(SERVICES),
        "tracking_number": pattern(rng, rng.choice(TRACKING_PATTERNS)),
        "ship_from": address(rng, upper=upper, with_country=rng.random() < 0.5),
        "ship_to": address(rng, upper=upper, with_country=rng.random() < 0.8),
        "weight": weight(rng, low=0.2, high=30.0, unit=unit),
        "date": date(rng),
        "reference": pattern(
            rng, rng.choice(("PO-99999", "9999-A", "#999999", "ORD/9999/999", "AA999", "AA 999 9-99"))
        ),
    }
    if rng.random() < 0.15:
        del doc["service"]
    if rng.random() < 0.4:
        del doc["reference"]
    return doc


def bill_of_lading(rng: random.Random) -> dict[str, Any]:
    unit = rng.choice(("kg", "kg", "lb"))
    kilos = [round(rng.uniform(20, 900)) for _ in range(rng.randint(1, 4))]
    items = [
        {
            "description": rng.choice(PRODUCTS),
            "quantity": f"{rng.randint(1, 60)} {rng.choice(FREIGHT_UNITS)}".strip(),
            "weight": f"{kg:,} {unit}",
        }
        for kg in kilos
    ]
    doc: dict[str, Any] = {
        "bol_number": pattern(
            rng, rng.choice(("BOL-9999-999999", "BL99999999", "AAAA9999999", "999-9999999"))
        ),
        "date": date(rng),
        "shipper": {"name": company(rng), "city": rng.choice(COUNTRIES[rng.choice(sorted(COUNTRIES))][0])},
        "consignee": {"name": company(rng), "city": rng.choice(COUNTRIES[rng.choice(sorted(COUNTRIES))][0])},
        "carrier": rng.choice(FREIGHT_CARRIERS),
        "items": items,
        "total_weight": f"{sum(kilos):,} {unit}",
    }
    if rng.random() < 0.2:
        del doc["total_weight"]
    return doc


def delivery_note(rng: random.Random) -> dict[str, Any]:
    block = address(rng, upper=False, with_country=False)
    items = [
        {
            "sku": pattern(rng, rng.choice(("SKU-99999", "AA-9999-A", "999-999", "AAA99999"))),
            "description": rng.choice(PRODUCTS),
            "quantity": f"{rng.randint(1, 200)} {rng.choice(PIECE_UNITS)}".strip(),
        }
        for _ in range(rng.randint(1, 5))
    ]
    doc: dict[str, Any] = {
        "note_number": pattern(rng, rng.choice(("DN-999999", "DN/9999/9999", "99999999", "LS-99999"))),
        "date": date(rng),
        "customer": company(rng),
        "delivery_address": f"{block['street']}, {block['city']} {block['postcode']}",
        "order_number": pattern(rng, rng.choice(("SO-9999-9999", "PO 999999", "#99999", "ORD-999999"))),
        "items": items,
    }
    if rng.random() < 0.25:
        del doc["order_number"]
    return doc


SAMPLERS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "shipping_label": shipping_label,
    "bill_of_lading": bill_of_lading,
    "delivery_note": delivery_note,
}


def sample_document(kind: str, rng: random.Random) -> dict[str, Any]:
    """Draw the printed values of one document of ``kind``, as its ``gt_parse``.

    ``sample_document("delivery_note", random.Random(0))`` →
    ``{"document_type": "delivery_note", "note_number": "DN-123456", "date": "03/11/2024", ...}``.
    The result always validates against the kind's schema.
    """
    return validate_document(kind, SAMPLERS[check_kind(kind)](rng)).gt_parse()
