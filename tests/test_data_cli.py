"""The `prism manifest|qc|preprocess` commands end to end on the test tree, and their one-line errors."""

from __future__ import annotations

import pytest
from test_data_fixtures import build_tree

import prism.cli
from prism.data.manifest import read_manifest
from prism.data.store import VolumeStore


@pytest.fixture
def prism_main(monkeypatch):
    monkeypatch.setattr(prism.cli, "COMMAND_MODULES", ("prism.data.cli",))  # this area's commands only
    return prism.cli.main


def test_build_qc_filter_merge_preprocess(prism_main, tmp_path, capsys):
    paths = build_tree(tmp_path / "tree")
    m = str(tmp_path / "m.parquet")
    assert prism_main(["manifest", "build", str(paths["bids"]), str(paths["plain"]), "--out", m, "--workers", "2"]) == 0
    assert "Demo_Study" in capsys.readouterr().out
    assert prism_main(["qc", m, "--out", str(tmp_path / "qc"), "--sample", "2"]) == 0
    assert (tmp_path / "qc" / "index.html").is_file()
    assert set(read_manifest(m)["qc_status"]) == {"pass", "warn", "fail"}  # written back into the manifest
    clean = str(tmp_path / "clean.csv")
    assert prism_main(["manifest", "filter", m, "--qc", "pass", "warn", "--out", clean]) == 0
    t1 = str(tmp_path / "t1.parquet")
    assert prism_main(["manifest", "filter", clean, "--sequence", "T1w", "--dataset", "plain", "--out", t1]) == 0
    assert len(read_manifest(t1)) == 2
    merged = str(tmp_path / "merged.parquet")
    assert prism_main(["manifest", "merge", clean, t1, "--out", merged]) == 0
    assert len(read_manifest(merged)) == 9 + 2
    store = str(tmp_path / "store")
    for shard in ("0/2", "1/2"):
        assert prism_main(["preprocess", clean, "--out", store, "--spacing", "3", "3", "3", "--shard", shard,
                           "--dataset-spacing", "plain=4,4,4", "--workers", "2"]) == 0
    index = VolumeStore(store).read_index()
    assert len(index) == 9 and set(index["status"]) == {"done"}
    assert prism_main(["manifest", "summary", merged]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["qc", "missing.parquet", "--out", "x"], "prism manifest build"),
        (["manifest", "build", "no_such_folder", "--out", "m.parquet"], "is not a folder"),
        (["preprocess", "m.csv", "--out", "s", "--shard", "3/2"], "0 <= i < n"),
        (["manifest", "build", ".", "--out", "m.txt"], "must end in .parquet or .csv"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(prism_main, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("dataset,subject,path\nA,1,a.nii.gz\n")
    assert prism_main(argv) == 2
    assert message in capsys.readouterr().err


def test_manifest_next_to_its_data_keeps_relative_paths_through_qc_filter_and_rebuild(prism_main, tmp_path, monkeypatch, capsys):
    """data_manifests/README.md's flow: paths relative to the manifest folder ('../data/...') survive every rewrite."""
    import pandas as pd

    build_tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    m = "manifests/demo.parquet"
    build = ["manifest", "build", "data/bids", "--out", m, "--dataset", "demo", "--relative-to", "manifests"]
    assert prism_main(build) == 0
    assert prism_main(["qc", m, "--out", "qc", "--sample", "1"]) == 0
    assert prism_main(["manifest", "filter", m, "--qc", "pass", "--out", "manifests/pass.csv"]) == 0
    for written in (m, "manifests/pass.csv"):
        paths = pd.read_parquet(written)["path"] if written.endswith(".parquet") else pd.read_csv(written)["path"]
        assert paths.str.startswith("../data/bids/").all(), written
    checked = read_manifest(m)
    assert prism_main(build) == 0  # an update: nothing read twice, QC columns kept
    again = read_manifest(m)
    assert len(again) == len(checked) and again["qc_status"].tolist() == checked["qc_status"].tolist()
