"""Pure parts of the worker: grouping, backoff, per-field confidences, Celery settings, file names."""

from __future__ import annotations

import random

import pytest

from donut_hole.documents.schemas import schema_note
from donut_hole.model.predict import Prediction
from donut_hole.model.tokens import build_tokenizer, field_tokens, json2token
from donut_hole.queue import TASK_CALLBACK, celery_config, time_limits
from donut_hole.settings import Settings
from donut_hole.worker.batching import Grouper, chunked
from donut_hole.worker.enqueue import safe_filename
from donut_hole.worker.fields import field_rows, flatten_parse
from donut_hole.worker.process import is_image_uri
from donut_hole.worker.tasks import backoff_s


def test_chunked_and_grouper() -> None:
    assert chunked(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert chunked([], 4) == []
    with pytest.raises(ValueError):
        chunked(["a"], 0)
    now = [0.0]
    grouper = Grouper(size=3, max_wait_s=1.0, clock=lambda: now[0])
    assert grouper.add(["a", "b"]) == [] and not grouper.due()
    now[0] = 0.5
    assert grouper.add(["c", "d"]) == [["a", "b", "c"]]
    now[0] = 1.4
    assert not grouper.due()  # "d" arrived at 0.5
    now[0] = 1.5
    assert grouper.due() and grouper.flush() == [["d"]] and grouper.flush() == []


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(0)
    for retries, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (8, 16)]):
        delays = [backoff_s(retries, rng=rng) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high and max(delays) - min(delays) > (high - low) / 2
    assert 150 <= backoff_s(30, cap_s=300, rng=rng) <= 300
    assert 30 <= backoff_s(30, rng=rng) <= 60  # the default cap: DONUT_HOLE_RETRY_BACKOFF_MAX_S


def test_celery_config_gives_the_delivery_guarantees() -> None:
    config = celery_config(
        Settings(broker_url="redis://127.0.0.1:6379/0", task_time_limit_s=600, queue="gpu")
    )
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_default_queue"] == "gpu" and config["task_routes"]["donut_hole.*"] == {"queue": "gpu"}
    # webhook deliveries have their own queue, which every worker also consumes
    assert config["task_routes"][TASK_CALLBACK] == {"queue": "gpu.callbacks"}
    assert (
        (config["task_soft_time_limit"], config["task_time_limit"]) == time_limits(Settings()) == (600, 660)
    )
    # Redelivery only when the worker is gone: longer than a task plus the longest retry delay.
    assert config["broker_transport_options"]["visibility_timeout"] >= 2 * 660 + 300
    embedded = celery_config(Settings())
    assert embedded["broker_url"].startswith(
        "donut-hole-sqlite+sqlite:///"
    )  # kombu's SQLAlchemy, polled faster
    assert "visibility_timeout" not in embedded["broker_transport_options"]


def test_flatten_parse_repeats_paths_of_list_items() -> None:
    data = {"ship_to": {"city": "Lyon"}, "items": [{"sku": "A"}, {"sku": "B"}], "note": ["x", "y"]}
    assert flatten_parse(data) == [
        ("ship_to.city", "Lyon"),
        ("items.sku", "A"),
        ("items.sku", "B"),
        ("note", "x"),
        ("note", "y"),
    ]


def test_field_confidence_is_the_mean_probability_of_the_value_tokens() -> None:
    data = {"carrier": "DHL", "ship_to": {"city": "Lyon"}}
    tokenizer = build_tokenizer(field_special_tokens=field_tokens([data]))
    sequence = json2token(data, sort_keys=False)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(sequence, add_special_tokens=False)["input_ids"])
    # <s_carrier> D H L </s_carrier> <s_ship_to> <s_city> L y o n </s_city> </s_ship_to> </s>
    assert tokens[:5] == ["<s_carrier>", "D", "H", "L", "</s_carrier>"]
    probs = [0.9, 0.9, 0.6, 0.3, 0.9, 0.9, 0.9, 0.2, 0.4, 0.6, 0.8, 0.9, 0.9, 0.95]
    read = Prediction(data=data, sequence=sequence, confidence=0.42, token_probs=probs)
    rows = field_rows(read, tokenizer)
    assert rows == [("carrier", "DHL", 0.6, None), ("ship_to.city", "Lyon", 0.5, None)]
    # The chosen token ids, where the reader kept them, line the fields up without tokenizing again.
    ids = tokenizer(sequence, add_special_tokens=False)["input_ids"]
    assert field_rows(Prediction(data, sequence, 0.42, probs, token_ids=ids), tokenizer) == rows
    # Tokens that do not line up with the probabilities: every field gets the document's confidence.
    rows = field_rows(
        Prediction(data=data, sequence=sequence, confidence=0.42, token_probs=probs[:5]), tokenizer
    )
    assert rows == [("carrier", "DHL", 0.42, None), ("ship_to.city", "Lyon", 0.42, None)]


def test_schema_note_explains_a_parse_that_does_not_fit() -> None:
    assert schema_note({"document_type": "shipping_label", "tracking_number": "1Z999"}) is None
    note = schema_note({"document_type": "shipping_label", "carrier": "DHL"})
    assert note is not None and note.startswith("schema: shipping_label") and "tracking_number" in note
    assert schema_note({"text_sequence": "garbage"}).startswith("schema: cannot tell the document type")


def test_image_uris_and_safe_filenames() -> None:
    assert is_image_uri("s3://b/x/Scan.JPG") and is_image_uri("file:///tmp/a.png")
    assert not is_image_uri("s3://b/x/metadata.jsonl") and not is_image_uri("s3://b/x/.hidden.jpg")
    assert safe_filename("../My Scan (1).JPG") == "My_Scan_1_.JPG"
    assert safe_filename("C:\\scans\\label.png") == "label.png"
    assert safe_filename("..") == "upload" and safe_filename("") == "upload"
