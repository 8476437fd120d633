"""User label maps, bad input and the `prism synth` command of prism.synth."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from prism.data.batch import validate_batch
from prism.synth.anatomy import LabelMapAnatomy
from prism.synth.config import SynthConfig
from prism.synth.datamodule import SynthDataModule
from prism.synth.generator import SynthGenerator


def _save(path, data, zooms=(2.0, 2.0, 2.0)):
    affine = np.diag([*zooms, 1.0]) if zooms else np.eye(4)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def label_map(tmp_path):
    data = np.zeros((30, 30, 30), dtype=np.int16)
    data[5:25, 5:25, 5:25] = 20  # "WM" in a user numbering
    data[8:22, 8:22, 8:22] = 30
    data[12:18, 12:18, 12:18] = 10
    return _save(tmp_path / "labels.nii.gz", data)


MAPPING = {0: "background", 10: "csf", 20: "wm", 30: "grey_matter"}


def test_user_label_map_drives_generation(label_map, tmp_path):
    mapping_file = tmp_path / "map.yaml"
    mapping_file.write_text("\n".join(f"{k}: {v}" for k, v in MAPPING.items()))
    anatomy = LabelMapAnatomy(label_map, mapping_file)
    volume = anatomy.volume(4.0)
    assert volume.shape == (15, 15, 15) and volume.tissue_ids == (0, 1, 2, 3)
    engine = SynthGenerator(SynthConfig(), crop_size=(12, 12, 12), spacing_mm=4.0, anatomy=anatomy)
    batch = engine.generate(2, 2, torch.Generator().manual_seed(0))
    validate_batch(batch)
    assert {1, 2, 3} <= set(batch["labels"].unique().tolist())
    json_file = tmp_path / "map.json"
    json_file.write_text(json.dumps({str(k): v for k, v in MAPPING.items()}))
    assert LabelMapAnatomy(label_map, json_file).mapping == anatomy.mapping


def test_labels_missing_from_the_mapping_are_named(label_map):
    anatomy = LabelMapAnatomy(label_map, {0: "background", 20: "wm"})
    with pytest.raises(ValueError, match=r"contains labels \[10, 30\] that the mapping does not name"):
        anatomy.volume(4.0)


def test_unknown_tissue_name_is_named(label_map):
    with pytest.raises(ValueError, match="Mapping entry 30: Unknown tissue name 'grey'"):
        LabelMapAnatomy(label_map, {0: "background", 10: "csf", 20: "wm", 30: "grey"})


def test_non_3d_and_non_integer_label_maps_are_rejected(tmp_path):
    four_d = _save(tmp_path / "4d.nii.gz", np.zeros((8, 8, 8, 3), dtype=np.int16))
    with pytest.raises(ValueError, match=r"has shape \(8, 8, 8, 3\); a 3D label volume is needed"):
        LabelMapAnatomy(four_d, {0: "background"}).volume(2.0)
    two_d = _save(tmp_path / "2d.nii.gz", np.zeros((8, 8), dtype=np.int16), zooms=())
    with pytest.raises(ValueError, match="3D label volume is needed"):
        LabelMapAnatomy(two_d, {0: "background"}).volume(2.0)
    fractional = _save(tmp_path / "frac.nii.gz", np.full((8, 8, 8), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="non-integer values"):
        LabelMapAnatomy(fractional, {0: "background"}).volume(2.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelMapAnatomy(tmp_path / "missing.nii.gz", {0: "background"})


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"deformation": {"rotation_deg": [10, -10]}}, r"deformation.rotation_deg has min 10.0 > max -10.0"),
        ({"artefacts": {"snr": [80, 10]}}, r"artefacts.snr has min 80.0 > max 10.0"),
        ({"resolution": {"slice_mm": [6, 1]}}, r"resolution.slice_mm has min"),
        ({"lesions": {"tumour_probability": 1.5}}, r"lesions.tumour_probability = 1.5 is not a probability"),
        ({"deformation": {"rotation": [0, 1]}}, r"Unknown synthesis config key deformation.rotation"),
        ({"noise": {}}, r"Unknown synthesis config group 'noise'"),
        ({"contrast": {"recipe_overrides": {"FLAIR": {"EchoTime": [0.2, 0.1]}}}},
         r"contrast.recipe_overrides.FLAIR.EchoTime has min 0.2 > max 0.1"),
        ({"sequences": ["T1w", "T2w"]}, r"Unknown synthetic sequence recipe 'T1w'"),
    ],
)
def test_bad_configs_raise_errors_naming_the_key(groups, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig.from_dict(**groups)


def test_datamodule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_size must be a list of 3 ints"):
        SynthDataModule(crop_size=[32, 32])
    with pytest.raises(ValueError, match="Unknown anatomy source 'brainweb'"):
        SynthDataModule(anatomy={"source": "brainweb"})


def _cli(argv: list[str]) -> int:
    from prism.synth.cli import add_commands

    parser = argparse.ArgumentParser(prog="prism")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_bids_with_sidecars_labels_and_preview(tmp_path):
    out, png = tmp_path / "bids", tmp_path / "grid.png"
    code = _cli(["synth", str(out), "--subjects", "2", "--sequences", "T1w_MPRAGE", "FLAIR", "T2w",
                 "--spacing", "5", "--seed", "1", "--preview", str(png)])
    assert code == 0
    assert json.loads((out / "dataset_description.json").read_text())["BIDSVersion"]
    anat = out / "sub-002" / "anat"
    t1 = nib.load(str(anat / "sub-002_acq-MPRAGE_T1w.nii.gz"))
    assert t1.shape == (39, 47, 38) and np.allclose(t1.header.get_zooms(), 5.0)
    flair = json.loads((anat / "sub-002_FLAIR.json").read_text())
    assert set(flair) >= {"RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "MagneticFieldStrength"}
    assert flair["RepetitionTime"] > 5.0 and 1.5 < flair["InversionTime"] < 3.5
    t2 = json.loads((anat / "sub-002_T2w.json").read_text())
    assert "InversionTime" not in t2 and t2["PrismSequenceType"] == "T2w"
    seg = nib.load(str(out / "derivatives" / "prism-synth" / "sub-002" / "anat" / "sub-002_dseg.nii.gz"))
    assert seg.shape == t1.shape and set(np.unique(np.asarray(seg.dataobj))) >= {0, 1, 2, 3}
    assert png.stat().st_size > 10_000


def test_cli_rejects_unknown_recipes(tmp_path):
    with pytest.raises(ValueError, match="Unknown synthetic sequence recipe 'MPRAGE'"):
        _cli(["synth", str(tmp_path / "x"), "--subjects", "1", "--sequences", "MPRAGE", "--spacing", "5"])
