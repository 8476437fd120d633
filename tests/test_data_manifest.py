"""Manifest building (BIDS + plain folders), sidecars, units, sequence inference, merge / filter, resume."""

from __future__ import annotations

import json
import os
import math

import pandas as pd
import pytest
from test_data_fixtures import build_tree, by_id, data_tree  # noqa: F401

from prism.data import scan
from prism.data.bids import normalize_parameter, parse_bids_name
from prism.data.manifest import MANIFEST_COLUMNS, filter_manifest, merge_manifests, read_manifest, write_manifest
from prism.data.sequence_inference import sequence_from_parameters, sequence_from_text


def test_scan_finds_bids_and_plain_images_and_records_skips(data_tree):
    manifest = read_manifest(data_tree["manifest"])
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert len(manifest) == 11
    assert set(manifest["dataset"]) == {"Demo_Study", "plain"}
    t1 = by_id(manifest, "sub-01_ses-1_T1w")
    assert (t1["subject"], t1["session"], t1["sequence"], t1["sequence_source"]) == ("01", "1", "T1w", "bids_suffix")
    assert (t1["shape"], t1["spacing"], t1["orientation"]) == ("50x56x44", "2x2x2", "RAS")
    assert by_id(manifest, "sub-02_T1w")["orientation"] == "LPS"
    assert by_id(manifest, "sub-03_T1w")["shape"] == "16x16x16x3"
    skipped = pd.read_csv(data_tree["manifest"].with_name("manifest.skipped.csv"))
    reasons = " ".join(skipped["reason"])
    assert "derivatives" in reasons and "func" in reasons and "label map" in reasons
    assert not manifest["path"].str.contains("derivatives|seg.nii|bold").any()


def test_sidecar_inheritance_merges_top_level_and_subject_files(data_tree):
    manifest = read_manifest(data_tree["manifest"])
    t1 = by_id(manifest, "sub-01_ses-1_T1w")
    assert t1["sidecars"].split(";") == [str(data_tree["bids"] / "T1w.json"), str(data_tree["t1"]).replace(".nii.gz", ".json")]
    assert (t1["MagneticFieldStrength"], t1["Manufacturer"], t1["body_part"]) == (3.0, "Siemens", "brain")  # inherited
    assert (t1["RepetitionTime"], t1["EchoTime"], t1["InversionTime"], t1["FlipAngle"]) == (2.3, 0.003, 0.9, 9.0)
    t2 = by_id(manifest, "sub-01_ses-1_T2w")  # the top-level T1w.json does not apply to T2w
    assert t2["Manufacturer"] == "" and math.isnan(t2["MagneticFieldStrength"])
    four_d = by_id(manifest, "sub-03_T1w")  # no own sidecar: inherits the top-level one only
    assert four_d["Manufacturer"] == "Siemens" and math.isnan(four_d["RepetitionTime"])


def test_units_and_wrong_types_are_converted_or_dropped_with_a_note(data_tree):
    manifest = read_manifest(data_tree["manifest"])
    flair = by_id(manifest, "sub-01_ses-1_FLAIR")
    assert (flair["RepetitionTime"], flair["EchoTime"], flair["InversionTime"]) == (9.0, 0.081, 2.5)
    assert "RepetitionTime=9000 looks like ms" in flair["notes"]
    t2 = by_id(manifest, "sub-01_ses-1_T2w")
    assert t2["RepetitionTime"] == 3.2 and math.isnan(t2["EchoTime"]) and t2["FlipAngle"] == 120.0
    assert "EchoTime='long' is not a number" in t2["notes"] and "FlipAngle lists 2 values" in t2["notes"]


def test_sequence_inference_records_its_source(data_tree):
    manifest = read_manifest(data_tree["manifest"])
    assert by_id(manifest, "patient_A/t1_mprage")["sequence_source"] == "filename"
    tse = by_id(manifest, "patient_A/t2_tse")
    assert (tse["sequence"], tse["Manufacturer"]) == ("T2w", "GE")
    scan7 = by_id(manifest, "patient_A/scan_7")
    assert (scan7["sequence"], scan7["sequence_source"]) == ("T1w", "sidecar")
    assert "TR=0.5 s" in scan7["sequence_evidence"]
    assert by_id(manifest, "patient_B/FLAIR")["sequence"] == "FLAIR"


@pytest.mark.parametrize(
    "text, expected",
    [("sub-01_T1w", "T1w"), ("BraTS20_001_t1ce", "T1w"), ("t2_flair_tra", "FLAIR"), ("3DT1", "T1w"), ("T2_TSE", "T2w"),
     ("PD_T2", "PDw"), ("AX_SWI", "SWI"), ("tof_3d", "MRA"), ("DWI_b1000", "DWI"), ("T2star_axial", "T2starw"),
     ("dt10", None), ("scan_12", None), ("gre_field_mapping", None)],
)
def test_sequence_keywords(text, expected):
    found = sequence_from_text(text)
    assert (found[0] if found else None) == expected


def test_sequence_from_parameters():
    assert sequence_from_parameters(9.0, 0.09, 2.5, 150)[0] == "FLAIR"
    assert sequence_from_parameters(2.3, 0.003, 0.9, 9)[0] == "T1w"
    assert sequence_from_parameters(4.0, 0.1, math.nan, 90)[0] == "T2w"
    assert sequence_from_parameters(3.0, 0.015, math.nan, 90)[0] == "PDw"
    assert sequence_from_parameters(0.05, 0.025, math.nan, 15)[0] == "T2starw"
    assert sequence_from_parameters(math.nan, 0.1, math.nan, 90) is None


@pytest.mark.parametrize(
    "name, raw, value, note",
    [("RepetitionTime", 2300, 2.3, "ms"), ("RepetitionTime", 2.3, 2.3, None), ("EchoTime", "30", 0.03, "ms"),
     ("EchoTime", True, None, "boolean"), ("FlipAngle", -5, None, "positive"), ("FlipAngle", 720, None, "plausible"),
     ("MagneticFieldStrength", 1500, 1.5, "mT"), ("InversionTime", {"a": 1}, None, "type"), ("EchoTime", None, None, None)],
)
def test_normalize_parameter(name, raw, value, note):
    got, message = normalize_parameter(name, raw)
    assert (math.isnan(got) if value is None else got == pytest.approx(value))
    assert (message is None) if note is None else (note in message)


def test_parse_bids_name():
    parsed = parse_bids_name("sub-01_ses-2_acq-fast_run-1_T1w.nii.gz")
    assert parsed.entities == {"sub": "01", "ses": "2", "acq": "fast", "run": "1"} and parsed.suffix == "T1w"
    assert parse_bids_name("t1 mprage.nii.gz") is None


def test_paths_are_relative_on_disk_and_csv_round_trips(data_tree, tmp_path):
    raw = pd.read_parquet(data_tree["manifest"])
    assert not raw["path"].str.startswith("/").any()  # data lies below the manifest's folder
    manifest = read_manifest(data_tree["manifest"])
    write_manifest(manifest, tmp_path / "copy.csv")
    again = read_manifest(tmp_path / "copy.csv")
    assert again["path"].tolist() == manifest["path"].tolist()
    assert again["RepetitionTime"].equals(manifest["RepetitionTime"])
    assert again["notes"].tolist() == manifest["notes"].tolist()


def test_merge_and_filter(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    bids, plain = manifest[manifest["dataset"] == "Demo_Study"], manifest[manifest["dataset"] == "plain"]
    merged = merge_manifests([bids, plain, plain.iloc[:1]])  # one duplicate: kept, QC flags it
    assert len(merged) == len(manifest) + 1
    assert len(filter_manifest(manifest, sequences=["FLAIR"])) == 2
    assert len(filter_manifest(manifest, sequences=["mprage"], datasets=["plain"])) == 2  # aliases accepted
    assert len(filter_manifest(manifest, body_parts=["BRAIN"])) == 3
    assert len(filter_manifest(manifest, qc=["unchecked"])) == len(manifest)
    with pytest.raises(ValueError, match="not a sequence type"):
        filter_manifest(manifest, sequences=["T1-weighted"])


def test_hand_written_csv_with_unknown_sequences_and_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("dataset,subject,path,sequence,EchoTime\nA,1,a.nii.gz,MPRAGE,30\nA,2,b.nii.gz,T1-weighted,\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest["sequence"].tolist() == ["T1w", ""]
    assert manifest["sequence_source"].tolist() == ["manual", "unknown"]
    assert "unknown sequence name 'T1-weighted'" in manifest["notes"][1]
    assert manifest["EchoTime"][0] == pytest.approx(0.03) and "looks like ms" in manifest["notes"][0]
    assert manifest["path"][0] == str(tmp_path / "a.nii.gz")
    assert manifest["volume_id"].is_unique
    (tmp_path / "bad.csv").write_text("dataset,path\nA,a.nii.gz\n")
    with pytest.raises(ValueError, match="subject"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="prism manifest build"):
        read_manifest(tmp_path / "absent.parquet")


def test_build_resumes_after_a_crash_and_updates_incrementally(tmp_path, monkeypatch):
    paths = build_tree(tmp_path / "tree")
    out = tmp_path / "m.parquet"
    calls = []
    original = scan.describe

    def crashing(candidate):
        calls.append(candidate.path)
        if len(calls) == 6:
            raise KeyboardInterrupt  # killed after 5 rows
        return original(candidate)

    monkeypatch.setattr(scan, "describe", crashing)
    with pytest.raises(KeyboardInterrupt):
        scan.build_manifest([str(paths["bids"]), str(paths["plain"])], out, batch_rows=2)
    assert not out.exists() and len(list(out.with_name("m.parquet.parts").glob("part-*.parquet"))) == 2  # 4 rows saved
    calls.clear()
    monkeypatch.setattr(scan, "describe", lambda c: (calls.append(c.path), original(c))[1])
    manifest = scan.build_manifest([str(paths["bids"]), str(paths["plain"])], out, batch_rows=2)
    assert len(calls) == 11 - 4 and len(manifest) == 11 and manifest["path"].is_unique
    assert not out.with_name("m.parquet.parts").exists()
    (paths["plain"] / "patient_C").mkdir()
    (paths["plain"] / "patient_C" / "T2.nii.gz").write_bytes(paths["tse"].read_bytes())
    calls.clear()
    manifest = scan.build_manifest([str(paths["bids"]), str(paths["plain"])], out)
    assert calls == [str(paths["plain"] / "patient_C" / "T2.nii.gz")] and len(manifest) == 12


def test_rebuild_with_a_relative_root_reads_no_file_twice(tmp_path, monkeypatch):
    paths = build_tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)  # relative --relative-to, as in data_manifests/README.md
    first = scan.build_manifest(["tree/bids"], "manifests/m.parquet", relative_to="manifests")
    assert pd.read_parquet("manifests/m.parquet")["path"].str.startswith("../tree/bids/").all()
    calls = []
    original = scan.describe
    monkeypatch.setattr(scan, "describe", lambda c: (calls.append(c.path), original(c))[1])
    again = scan.build_manifest(["tree/bids"], "manifests/m.parquet", relative_to="manifests")
    assert calls == [] and again["path"].tolist() == first["path"].tolist()
    assert again["path"].map(os.path.isabs).all() and str(paths["bids"]) in again["path"][0]


def test_demo_manifest_lists_the_demo_tree_by_relative_paths():
    """data_manifests/demo.parquet must work from any checkout: paths relative to its folder, all QC-checked."""
    from pathlib import Path

    demo = Path(__file__).parents[1] / "data_manifests" / "demo.parquet"
    raw = pd.read_parquet(demo)
    assert raw["path"].str.startswith("../data/demo/sub-").all() and raw["sidecars"].str.startswith("../data/demo/").all()
    manifest = read_manifest(demo)
    assert sorted(manifest["sequence"].value_counts().to_dict().items()) == [("FLAIR", 3), ("T1w", 3), ("T2w", 3)]
    assert set(manifest["qc_status"]) == {"pass"} and manifest["path"].map(os.path.isabs).all()
