import pandas as pd
import pytest

from dramseg.cohort import read_cohort_table
from dramseg.errors import PipelineInputError

SCORES = {"score_lul": "1", "score_lll": "2", "score_rul": "0", "score_rml": "3", "score_rll": "5"}


def write_table(folder, rows):
    (folder / "ct.nii.gz").write_bytes(b"placeholder")
    path = folder / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def row(**changes):
    base = {"scan_id": "case01", "ct": "ct.nii.gz", "split": "train", **SCORES}
    base.update(changes)
    return base


def test_valid_table_records(tmp_path):
    path = write_table(tmp_path, [row(), row(scan_id="case02", split="test", **{k: "" for k in SCORES})])
    records = read_cohort_table(path)
    assert [record["scan_id"] for record in records] == ["case01", "case02"]
    assert records[0]["scores"] == {"lul": 1, "lll": 2, "rul": 0, "rml": 3, "rll": 5}
    assert records[1]["scores"] is None
    assert records[0]["ct"] == str(tmp_path / "ct.nii.gz")
    assert records[0]["lobe_convention"] == "diag"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([row(), row()], "already appears on line 2"),
        ([row(scan_id="case 01")], "scan_id 'case 01' is invalid"),
        ([row(scan_id="../etc")], "is invalid"),
        ([row(scan_id="a/b")], "is invalid"),
        ([row(score_lul="6")], "score_lul = '6' is outside 0-5"),
        ([row(score_lul="-1")], "outside 0-5"),
        ([row(score_lul="2.5")], "is not an integer"),
        ([row(score_lul="two")], "is not a number"),
        ([row(score_lul="inf")], "is not an integer"),
        ([row(corads="nan")], "is not an integer"),
        ([row(split="training")], "split 'training' is not one of"),
        ([row(**{k: "" for k in SCORES})], "a train scan needs the five severity scores"),
        ([row(split="val", **{k: "" for k in SCORES})], "a val scan needs"),
        ([row(score_rll="")], "are empty. Give all five or none"),
        ([row(ct="missing.nii.gz")], "ct file .* not found"),
        ([row(corads="7")], "corads = '7' is outside 1-6"),
        ([row(lobe_convention="lungmsk")], "lobe_convention 'lungmsk' is not one of"),
    ],
)
def test_invalid_rows_name_the_line(tmp_path, rows, message):
    path = write_table(tmp_path, rows)
    with pytest.raises(PipelineInputError, match=message) as caught:
        read_cohort_table(path)
    assert "line" in str(caught.value)


def test_missing_columns(tmp_path):
    path = tmp_path / "cohort.csv"
    pd.DataFrame([{"scan_id": "a", "ct": "x"}]).to_csv(path, index=False)
    with pytest.raises(PipelineInputError, match="lacks the columns"):
        read_cohort_table(path)


def test_unknown_column(tmp_path):
    path = write_table(tmp_path, [row(severity="3")])
    with pytest.raises(PipelineInputError, match="unknown columns \\['severity'\\]"):
        read_cohort_table(path)


def test_missing_table(tmp_path):
    with pytest.raises(PipelineInputError, match="not found"):
        read_cohort_table(tmp_path / "nope.csv")


def test_integer_like_float_score_accepted(tmp_path):
    path = write_table(tmp_path, [row(score_lul="2.0")])
    assert read_cohort_table(path)[0]["scores"]["lul"] == 2
