"""Folder adapters (Decathlon, BraTS-style, CSV) on tiny NIfTI trees written here, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from prism.data.batch import validate_batch
from prism.finetune.adapters import BratsFolderDataModule, CsvTaskDataModule, DecathlonDataModule
from prism.finetune.volume_dataset import AdapterError

SHAPE = (20, 18, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
CROP = (16, 16, 16)


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def label_map(seed: int, values=(1, 2, 4), shape=SHAPE) -> np.ndarray:
    """Blocks of each label value inside a zero background (every value present)."""
    labels = np.zeros(shape, np.int16)
    rng = np.random.default_rng(seed)
    for index, value in enumerate(values):
        x = 2 + 5 * index + int(rng.integers(0, 2))
        labels[x : x + 4, 4:12, 4:12] = value
    return labels


def image_like(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (labels * 100.0 + rng.normal(200.0, 10.0, labels.shape)).astype(np.float32)


def brats_tree(root: Path, cases: int = 4, skip_flair_of: str | None = None) -> Path:
    for i in range(cases):
        name = f"case{i:02d}"
        labels = label_map(i)
        write(root / name / f"{name}_seg.nii.gz", labels)
        write(root / name / f"{name}_t1.nii.gz", image_like(labels, i))
        if name != skip_flair_of:
            write(root / name / f"{name}_flair.nii.gz", image_like(labels, 10 + i))
    return root


BRATS = dict(sequence_suffixes={"t1": "T1w", "flair": "FLAIR"}, label_values=[0, 1, 2, 4], crop_size=CROP,
             spacing_mm=2.0, batch_size=2, val_fraction=0.25, test_fraction=0.25)


def test_brats_folders_give_contract_batches_with_remapped_labels(tmp_path):
    dm = BratsFolderDataModule(str(brats_tree(tmp_path / "brats", skip_flair_of="case01")), **BRATS)
    assert dm.task.kind == "segmentation" and dm.task.num_outputs == 4
    assert sorted(c.split for c in dm.cases) == ["test", "train", "train", "val"]
    assert dm.sequences == ["FLAIR", "T1w"]
    batch = next(iter(dm.train_dataloader()))
    validate_batch(batch)
    assert batch["image"].shape == (2, 2, *CROP) and batch["labels"].shape == (2, *CROP)
    assert batch["labels"].max() <= 3  # value 4 became class 3
    assert batch["sequence_id"].tolist()[0] == [2, 0] or not batch["view_present"][0].all()
    whole = next(iter(dm.val_dataloader()))  # evaluation: the whole volume, batch 1
    assert whole["image"].shape[-3:] == SHAPE and whole["labels"].shape == (1, *SHAPE)
    absent = [dm.datasets[s][i] for s in ("train", "val", "test") for i in range(len(dm.datasets[s])) if dm.datasets[s].cases[i].subject_id == "case01"][0]
    assert absent["view_present"].tolist() == [False, True] and absent["sequence_id"][0] == -1
    assert float(absent["image"][0].abs().sum()) == 0.0


def test_brats_label_value_not_declared_is_named(tmp_path):
    root = brats_tree(tmp_path / "brats")
    write(root / "case00" / "case00_seg.nii.gz", label_map(0, values=(1, 2, 3)))
    dm = BratsFolderDataModule(str(root), **{**BRATS, "val_fraction": 0.0, "test_fraction": 0.0})
    with pytest.raises(AdapterError, match="case00.*label values \\[0, 1, 2, 3\\]"):
        [dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))]


def test_contrast_augmentation_on_real_folders_names_the_fix(tmp_path):
    # finetune_seg_invariant sets data.contrast_augmentation: true; a folder of real scans cannot be re-rendered
    with pytest.raises(AdapterError, match="synthetic tissue maps.*~data.contrast_augmentation"):
        BratsFolderDataModule(str(brats_tree(tmp_path / "brats")), contrast_augmentation=True, **BRATS)


def test_mismatched_image_and_label_shapes_are_named(tmp_path):
    root = brats_tree(tmp_path / "brats")
    write(root / "case02" / "case02_t1.nii.gz", np.ones((20, 18, 14), np.float32))
    with pytest.raises(AdapterError, match="Case 'case02'.*different shapes.*T1w 20x18x14.*label 20x18x16"):
        BratsFolderDataModule(str(root), **BRATS)


def test_segmentation_class_missing_from_training_split(tmp_path):
    root = tmp_path / "brats"
    for i in range(4):  # value 4 only in one case, which lands outside training
        name = f"case{i:02d}"
        labels = label_map(i, values=(1, 2, 4) if i == 0 else (1, 2))
        write(root / name / f"{name}_seg.nii.gz", labels)
        write(root / name / f"{name}_t1.nii.gz", image_like(labels, i))
    cases = {f"case{i:02d}" for i in range(4)}
    for seed in range(20):
        try:
            dm = BratsFolderDataModule(str(root), **{**BRATS, "seed": seed, "sequence_suffixes": {"t1": "T1w"}})
        except AdapterError as err:
            assert "classes ['class_4' (3)] have no example in the training split" in str(err)
            return
        assert {c.subject_id for c in dm.cases} == cases
    pytest.fail("no seed put case00 outside training")


def test_decathlon_dataset_json_with_4d_multimodal_images(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    training = []
    for i in range(3):
        labels = label_map(i, values=(1, 2))
        image = np.stack([image_like(labels, i), image_like(labels, 20 + i)], axis=-1)
        write(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", image)
        write(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels)
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"}, "training": training, "test": [],
    }))
    dm = DecathlonDataModule(str(root), crop_size=CROP, spacing_mm=2.0, batch_size=1, val_fraction=0.34, test_fraction=0.34)
    assert dm.task.output_names == ["background", "edema", "tumour"] and dm.task.name == "BRATS"
    item = dm.datasets["train"][0]
    assert item["image"].shape == (2, *CROP) and item["sequence_id"].tolist() == [2, 0]
    assert not torch.equal(item["image"][0], item["image"][1])  # the two channels, not one twice
    (root / "dataset.json").write_text(json.dumps({"name": "x", "labels": {}, "training": []}))
    with pytest.raises(AdapterError, match="no 'modality' entry"):
        DecathlonDataModule(str(root), crop_size=CROP)


def csv_tree(root: Path, rows: list[str]) -> Path:
    for i in range(6):
        labels = label_map(i)
        write(root / f"s{i}" / "t1.nii.gz", image_like(labels, i))
        write(root / f"s{i}" / "flair.nii.gz", image_like(labels, 30 + i))
    path = root / "cohort.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_classification_with_split_column_and_missing_sequence(tmp_path):
    rows = ["subject,T1w,FLAIR,label,split"] + [
        f"s{i},s{i}/t1.nii.gz,{'' if i == 1 else f's{i}/flair.nii.gz'},{'patient' if i % 2 else 'control'},{['train', 'train', 'train', 'train', 'val', 'test'][i]}"
        for i in range(6)
    ]
    dm = CsvTaskDataModule(str(csv_tree(tmp_path, rows)), "classification", ["T1w", "FLAIR"], ["label"], crop_size=CROP, batch_size=4)
    assert dm.task.output_names == ["control", "patient"]
    batch = next(iter(dm.train_dataloader()))
    validate_batch(batch)
    assert batch["image"].shape == (4, 2, *CROP) and batch["target"].dtype == torch.int64
    by_subject = dict(zip(batch["subject_id"], batch["view_present"].tolist()))
    assert by_subject["s1"] == [False, True] and by_subject["s0"] == [True, True]  # views sorted: FLAIR, T1w


def test_csv_class_only_in_test_split_is_an_error(tmp_path):
    rows = ["subject,T1w,label,split"] + [f"s{i},s{i}/t1.nii.gz,{'rare' if i == 5 else 'common'},{'test' if i == 5 else 'train'}" for i in range(6)]
    with pytest.raises(AdapterError, match="classes \\['rare' \\(1\\)\\] have no example in the training split"):
        CsvTaskDataModule(str(csv_tree(tmp_path, rows)), "classification", ["T1w"], ["label"], crop_size=CROP)


def test_csv_regression_targets_are_standardised_with_training_statistics(tmp_path):
    rows = ["subject,T1w,age,split"] + [f"s{i},s{i}/t1.nii.gz,{40 + 10 * i},{'test' if i == 5 else 'train'}" for i in range(6)]
    dm = CsvTaskDataModule(str(csv_tree(tmp_path, rows)), "regression", ["T1w"], ["age"], crop_size=CROP)
    assert dm.task.target_mean == [60.0] and dm.task.target_std[0] == pytest.approx(np.std([40, 50, 60, 70, 80]))
    item = dm.datasets["test"][0]
    assert item["target"].shape == (1,) and float(dm.task.to_real_units(item["target"])) == pytest.approx(90.0)
    rows[3] = "s2,s2/t1.nii.gz,unknown,train"
    with pytest.raises(AdapterError, match="'s2' has a non-numeric target"):
        CsvTaskDataModule(str(csv_tree(tmp_path, rows)), "regression", ["T1w"], ["age"], crop_size=CROP)


def test_csv_missing_columns_are_named(tmp_path):
    path = csv_tree(tmp_path, ["subject,T1w,label", "s0,s0/t1.nii.gz,a"])
    with pytest.raises(AdapterError, match="lacks columns \\['FLAIR'\\]"):
        CsvTaskDataModule(str(path), "classification", ["T1w", "FLAIR"], ["label"], crop_size=CROP)


def test_csv_segmentation_discovers_label_values(tmp_path):
    for i in range(3):
        write(tmp_path / f"s{i}" / "seg.nii.gz", label_map(i, values=(1, 5)))
    rows = ["subject,T1w,seg,split"] + [f"s{i},s{i}/t1.nii.gz,s{i}/seg.nii.gz,{'test' if i == 5 else 'train'}" for i in range(3)]
    dm = CsvTaskDataModule(str(csv_tree(tmp_path, rows)), "segmentation", ["T1w"], ["seg"], crop_size=CROP)
    assert dm.task.kind == "segmentation" and dm.task.output_names == ["background", "class_1", "class_5"]
    assert sorted(np.unique(dm.datasets["train"].volumes(0)[2]).tolist()) == [0, 1, 2]  # value 5 -> class 2


def test_unknown_or_missing_sequences_are_named(tmp_path):
    root = brats_tree(tmp_path / "brats", skip_flair_of="case01")
    with pytest.raises(AdapterError, match="data.sequences \\['T2w'\\] are not in this dataset; it has \\['FLAIR', 'T1w'\\]"):
        BratsFolderDataModule(str(root), **BRATS, sequences=["T2w"])
    with pytest.raises(AdapterError, match="Case 'case01' has none of the sequences \\['FLAIR'\\]"):
        BratsFolderDataModule(str(root), **BRATS, sequences=["FLAIR"])
