import json
from pathlib import Path

import pytest

from donut_hole.evaluation.dataset import DatasetError, read_dataset


def _write(folder, lines):
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_reads_donut_format_string_and_object(tmp_path):
    gt = {"gt_parse": {"tracking_number": "1Z1"}}
    _write(
        tmp_path,
        [
            json.dumps({"file_name": "a.jpg", "ground_truth": json.dumps(gt)}),
            "",
            json.dumps({"file_name": "b.jpg", "ground_truth": gt}),
        ],
    )
    samples = read_dataset(tmp_path)
    assert [s.image_path.name for s in samples] == ["a.jpg", "b.jpg"]
    assert samples[0].gt_parse == {"tracking_number": "1Z1"}
    assert len(read_dataset(tmp_path, limit=1)) == 1


def test_bad_dataset_errors_name_the_place(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata\.jsonl is missing"):
        read_dataset(tmp_path)
    _write(tmp_path, ['{"file_name": "a.jpg"}'])
    with pytest.raises(DatasetError, match=r"metadata.jsonl:1"):
        read_dataset(tmp_path)
    _write(tmp_path, [])
    with pytest.raises(DatasetError, match="no samples"):
        read_dataset(tmp_path)


REAL_SCANS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_scans"


def test_real_scans_folder_reads():
    samples = read_dataset(REAL_SCANS)
    assert len(samples) == 3
    assert all(s.image_path.is_file() for s in samples)
    assert "tracking_number" in samples[0].gt_parse
