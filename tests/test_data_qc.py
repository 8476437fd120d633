"""QC: one clear finding per problem, fail rows excluded downstream, report with thumbnails, resumable shards."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_data_fixtures import by_id, data_tree  # noqa: F401

from prism.data.manifest import read_manifest, usable_rows, validate_manifest
from prism.data.qc import run_qc


@pytest.fixture(scope="module")
def checked(data_tree, tmp_path_factory):
    """QC of the test tree plus extra bad rows: NaN, constant, missing file, a duplicate."""
    root = tmp_path_factory.mktemp("qc")
    manifest = read_manifest(data_tree["manifest"])
    nan = np.ones((12, 12, 12), np.float32)
    nan[:4] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.full((12, 12, 12), 7, np.int16), np.eye(4)), root / "constant.nii.gz")
    extra = pd.DataFrame(
        [{"dataset": "x", "subject": s, "path": str(root / f"{s}.nii.gz"), "sequence": "T1w"} for s in ("nan", "constant", "gone")]
    )
    manifest = pd.concat([manifest, validate_manifest(extra), manifest.iloc[[0]]], ignore_index=True)
    return run_qc(manifest, root / "report", workers=2, sample_thumbnails=3), root / "report"


def test_each_problem_gets_a_clear_finding(checked):
    frame, _ = checked
    status = dict(zip(frame.index, frame["qc_status"]))
    assert by_id(frame, "sub-03_T2w")["qc_reason"].startswith("corrupt or truncated voxel data")
    assert "4D image of shape (16, 16, 16, 3) where a 3D T1w is expected" in by_id(frame, "sub-03_T1w")["qc_reason"]
    assert "NaN/Inf" in by_id(frame, "/nan")["qc_reason"]
    assert "constant volume" in by_id(frame, "/constant")["qc_reason"]
    assert "file not found" in by_id(frame, "/gone")["qc_reason"]
    assert frame["qc_status"].iloc[-1] == "fail" and "duplicate: same path" in frame["qc_reason"].iloc[-1]
    assert frame["qc_status"].iloc[0] != "fail"  # the first of the duplicates stays
    flair = by_id(frame.iloc[:-1], "sub-01_ses-1_FLAIR")
    assert flair["qc_status"] == "warn" and "looks like ms" in flair["qc_reason"]
    assert "EchoTime='long'" in by_id(frame, "sub-01_ses-1_T2w")["qc_reason"]
    assert by_id(frame, "patient_A/t1_mprage")["qc_status"] == "pass"
    assert sum(s == "fail" for s in status.values()) == 6


def test_failed_rows_are_excluded_downstream(checked):
    frame, _ = checked
    kept = usable_rows(frame)
    assert len(kept) == len(frame) - 6 and not kept["qc_status"].eq("fail").any()


def test_report_has_csv_html_and_thumbnails(checked):
    frame, report = checked
    table = pd.read_csv(report / "qc_report.csv", keep_default_na=False)
    assert len(table) == len(frame) and set(table["qc_status"]) == {"pass", "warn", "fail"}
    html = (report / "index.html").read_text()
    flagged_with_pixels = table[(table["qc_status"] != "pass") & (table["thumbnail"] != "")]
    assert len(flagged_with_pixels) >= 4  # nan, constant, duplicate and the warnings have readable pixels
    for thumbnail in table["thumbnail"][table["thumbnail"] != ""]:
        assert (report / thumbnail).is_file() and thumbnail in html
    assert "file not found" in html and not (report / "qc.parts").exists()


def test_qc_shards_resume_and_complete(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    assert run_qc(manifest, tmp_path, shard=(0, 2)) is None  # half done: no report yet
    assert not (tmp_path / "qc_report.csv").exists()
    frame = run_qc(manifest, tmp_path, shard=(1, 2))
    assert frame is not None and (frame["qc_status"] != "").all() and (tmp_path / "index.html").is_file()
