from pathlib import Path

import pytest

from donut_hole.model.build import new_model, save_model

DOCS = [
    {"document_type": "shipping_label", "tracking_number": "1Z999AA10123456784", "weight": "2.5 kg"},
    {
        "document_type": "delivery_note",
        "items": [{"sku": "A-1", "quantity": "2"}, {"sku": "B-7", "quantity": "1"}],
    },
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DONUT (random weights) saved the way every checkpoint is saved."""
    model, processor = new_model("tiny", documents=DOCS, image_size=(160, 160))
    return save_model(model, processor, tmp_path_factory.mktemp("tiny") / "model")
