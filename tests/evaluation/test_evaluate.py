from donut_hole.evaluation.evaluate import Evaluation
from donut_hole.evaluation.metrics import evaluate


def _record(prediction, truth):
    return {"prediction": prediction, "ground_truth": truth, "error": None, "file_name": "x.jpg"}


def test_scores_by_document_type():
    label = {"document_type": "shipping_label", "tracking": "1Z9"}
    note = {"document_type": "delivery_note", "number": "DN-1"}
    records = [
        _record(label, label),
        _record({"document_type": "shipping_label"}, label),
        _record({}, note),
        _record({"total": "3"}, {"total": "3"}),  # no document type
    ]
    evaluation = Evaluation(
        result=evaluate([r["prediction"] for r in records], [r["ground_truth"] for r in records]),
        records=records,
    )
    by_type = evaluation.by_type()
    assert list(by_type) == ["delivery_note", "other", "shipping_label"]
    assert by_type["shipping_label"].n == 2 and by_type["shipping_label"].f1 == 3 / 3.5  # tp 3, one missed
    assert by_type["delivery_note"].f1 == 0.0 and by_type["other"].f1 == 1.0
    assert evaluation.to_dict()["by_type"]["shipping_label"] == {
        "f1": 3 / 3.5,
        "ted_accuracy": by_type["shipping_label"].ted_accuracy,
        "n": 2,
    }
