"""ManifestDataModule / ManifestBatchStream: batch contract, alignment, masks, weights, determinism, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_data_fixtures import data_tree  # noqa: F401

from prism.data.batch import validate_batch
from prism.data.datamodule import ManifestDataModule
from prism.data.manifest import read_manifest, write_manifest
from prism.data.sampler import ManifestBatchStream, build_table
from prism.data.store import open_array
from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_TYPES

CROP = (16, 16, 16)


@pytest.fixture(scope="module")
def datamodule(data_tree, tmp_path_factory):
    """QC-free manifest preprocessed at 2 mm by prepare_data (the 2 broken volumes fail there)."""
    dm = ManifestDataModule(
        str(data_tree["manifest"]), store=str(tmp_path_factory.mktemp("store") / "s"), batch_size=4, crop_size=CROP,
        num_views=3, seed=7, val_fraction=0.0, preprocess={"spacing": [2.0, 2.0, 2.0]},
    )
    dm.prepare_data()
    dm.setup()
    return dm


def _batch(dm, index, rank=0, seed=7):
    stream = dm.build_stream(seed, rank, 0, None, "train")
    return stream.make_batch(index, stream.generator_for(index))


def test_batches_follow_the_contract_and_are_deterministic(datamodule):
    batch = _batch(datamodule, 0)
    validate_batch(batch)
    assert batch["image"].shape == (4, 3, *CROP)
    again = _batch(datamodule, 0)
    assert torch.equal(batch["image"], again["image"]) and batch["subject_id"] == again["subject_id"]
    other_rank = _batch(datamodule, 0, rank=1)
    assert not torch.equal(batch["image"], other_rank["image"])
    assert not torch.equal(batch["image"], _batch(datamodule, 1)["image"])


def test_views_share_one_window_and_absent_views_are_empty(datamodule):
    stream = datamodule.build_stream(7, 0, 0, None, "train")
    table = stream.table
    for index in range(20):
        generator = stream.generator_for(index)
        first_draw = stream.draw(stream.generator_for(index))
        batch = stream.make_batch(index, generator)
        subject, volumes, start = first_draw
        assert batch["subject_id"][0] == table.subject_names[subject]
        for view, volume in enumerate(volumes):  # the crop is the same window of every view's stored array
            array = np.asarray(open_array(table.files[volume]), dtype=np.float32)
            expected = np.zeros(CROP, np.float32)
            src = tuple(slice(max(s, 0), min(s + c, n)) for s, c, n in zip(start, CROP, array.shape))
            dst = tuple(slice(x.start - s, x.stop - s) for x, s in zip(src, start))
            expected[dst] = array[src]
            assert torch.equal(batch["image"][0, view], torch.from_numpy(expected))
        assert batch["view_present"][0].tolist() == [True] * len(volumes) + [False] * (3 - len(volumes))
        absent = ~batch["view_present"]
        assert (batch["image"][absent] == 0).all() and (batch["sequence_id"][absent] == -1).all()
        assert not batch["acq_present"][absent].any()


def test_sequences_and_acquisition_parameters_come_from_the_manifest(datamodule):
    seen = {}
    for index in range(30):
        batch = _batch(datamodule, index)
        for b, subject in enumerate(batch["subject_id"]):
            for v in range(3):
                if batch["view_present"][b, v]:
                    seen.setdefault((subject, int(batch["sequence_id"][b, v])), set()).add(
                        tuple(batch["acq_params"][b, v].tolist()) + tuple(batch["acq_present"][b, v].tolist())
                    )
    t1 = SEQUENCE_TYPES.index("T1w")
    (values,) = seen[("Demo_Study/01", t1)]
    assert values[:5] == pytest.approx((2.3, 0.003, 0.9, 9.0, 3.0)) and values[5:] == (True,) * 5
    (t2,) = seen[("Demo_Study/01", SEQUENCE_TYPES.index("T2w"))]
    echo = ACQUISITION_PARAMETERS.index("EchoTime")
    assert t2[5 + echo] is False and t2[echo] == 0.0  # 'long' in the sidecar: unknown, not invented
    assert "Demo_Study/03" not in {s for s, _ in seen}  # both of its volumes failed


def test_dataset_weights_follow_alpha(datamodule):
    table = datamodule.tables["train"]
    counts = {name: len(s) for name, s in zip(table.dataset_names, table.dataset_subjects)}
    assert counts == {"Demo_Study": 2, "plain": 2}
    volumes = pd.DataFrame({"volume_id": [f"v{i}" for i in range(10)], "file": "x", "shape": "4x4x4", "dataset": ["big"] * 9 + ["small"],
                            "subject": [str(i) for i in range(10)], "grid_id": [f"g{i}" for i in range(10)], "sequence": "T1w",
                            **{p: np.nan for p in ACQUISITION_PARAMETERS}})
    table = build_table(volumes)
    assert table.dataset_weights(1.0) == pytest.approx([0.9, 0.1])
    assert table.dataset_weights(0.0) == pytest.approx([0.5, 0.5])
    assert table.dataset_weights(0.5) == pytest.approx([3 / 4, 1 / 4])
    stream = ManifestBatchStream(table, batch_size=1, crop_size=(4, 4, 4), num_views=1, dataset_alpha=0.5)
    generator = torch.Generator().manual_seed(0)
    small = sum(table.subject_names[stream.draw(generator)[0]].startswith("small/") for _ in range(2000))
    assert 0.21 < small / 2000 < 0.29  # drawn with the weights: 1/4


def test_qc_failures_are_excluded_and_subjects_split(data_tree, tmp_path):
    manifest = read_manifest(data_tree["manifest"])
    manifest.loc[manifest["subject"] == "patient_B", "qc_status"] = "fail"
    write_manifest(manifest, tmp_path / "m.parquet")
    dm = ManifestDataModule(str(tmp_path / "m.parquet"), store=str(tmp_path / "s"), crop_size=CROP, val_fraction=0.65,
                            preprocess={"spacing": [3.0, 3.0, 3.0]})
    dm.prepare_data()
    dm.setup()
    # name hashes: Demo_Study/01 0.63, plain/patient_A 0.54 -> validation; Demo_Study/02 0.67 -> training
    assert dm.tables["train"].subject_names == ["Demo_Study/02"]
    assert dm.tables["val"].subject_names == ["Demo_Study/01", "plain/patient_A"]
    validate_batch(_batch(dm, 0))


def test_dataloader_workers_yield_the_same_stream(datamodule):
    datamodule.num_workers = 2
    try:
        loaded = [b for _, b in zip(range(4), datamodule.train_dataloader())]
    finally:
        datamodule.num_workers = 0
    for index, batch in enumerate(loaded):
        assert torch.equal(batch["image"], _batch(datamodule, index)["image"])


def test_clear_errors(data_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="prism manifest build"):
        ManifestDataModule(str(tmp_path / "none.parquet"))
    with pytest.raises(ValueError, match="data.manifest is required"):
        ManifestDataModule("???")
    dm = ManifestDataModule(str(data_tree["manifest"]), store=str(tmp_path / "empty"), preprocess_missing=False)
    with pytest.raises(FileNotFoundError, match="prism preprocess"):
        dm.prepare_data()
    manifest = read_manifest(data_tree["manifest"])
    manifest["path"] = [p.replace("/bids/", "/moved/").replace("/plain/", "/moved/") for p in manifest["path"]]
    write_manifest(manifest, tmp_path / "moved.parquet")
    with pytest.raises(FileNotFoundError, match="data.data_root"):
        ManifestDataModule(str(tmp_path / "moved.parquet"), store=str(tmp_path / "s2")).prepare_data()


def test_windows_larger_than_the_volume_are_zero_padded(datamodule):
    table = datamodule.tables["train"]
    shape = tuple(int(n) for n in table.shapes[0])
    crop = tuple(n + 6 for n in shape)
    stream = ManifestBatchStream(table, batch_size=1, crop_size=crop, num_views=1)
    out = torch.full(crop, float("nan"))  # read_crop must overwrite every voxel
    stream.read_crop(0, (-2, -3, -6), out)
    expected = torch.zeros(crop)
    expected[2 : 2 + shape[0], 3 : 3 + shape[1], 6 : 6 + shape[2]] = torch.from_numpy(np.asarray(open_array(table.files[0]), dtype=np.float32))
    assert torch.equal(out, expected)
    batch = stream.make_batch(0, stream.generator_for(0))
    assert torch.isfinite(batch["image"]).all() and batch["image"].shape == (1, 1, *crop)
