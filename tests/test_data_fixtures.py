"""Builders of small on-disk MRI trees for the data tests (nibabel only, no network).

``build_tree(root)`` writes:

* ``bids/``: a BIDS dataset ("Demo Study") with a top-level ``T1w.json`` inherited by every
  T1w image; ``sub-01/ses-1`` with T1w (larger field of view), FLAIR (sidecar in milliseconds, coarser
  slices, same world space) and T2w (sidecar with wrong types); ``sub-02`` (no session)
  with a T1w and a T2w; ``sub-03`` with a 4D "T1w" and a truncated (corrupt) T2w; a
  ``func`` BOLD run and a ``derivatives`` folder (both skipped).
* ``plain/``: dcm2niix-style folders: ``patient_A`` (t1_mprage, t2_tse + sidecar,
  ``scan_7`` known only from its sidecar TR/TE, a segmentation that is skipped) and
  ``patient_B`` (one FLAIR).

Images are smooth analytic phantoms evaluated at each voxel's world position, so every
grid of a subject shows the same anatomy in the same place.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

CONTRAST = {"T1w": (900.0, 400.0, 150.0), "T2w": (300.0, 500.0, 1000.0), "FLAIR": (500.0, 700.0, 50.0)}


def affine_for(spacing: tuple[float, float, float], shape: tuple[int, int, int], codes: str = "RAS", rotation_deg: float = 0.0) -> np.ndarray:
    """An affine centring the grid on world (0, 0, 0), axes along ``codes`` (e.g. 'LPS'), rotated about z."""
    signs = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    axes = np.zeros((3, 3))
    for column, code in enumerate(codes):
        row, sign = signs[code]
        axes[row, column] = sign
    angle = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    linear = rotation @ axes @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.array(shape) - 1) / 2.0)
    return affine


def phantom(shape: tuple[int, int, int], affine: np.ndarray, sequence: str = "T1w", seed: int = 0) -> np.ndarray:
    """Head-like phantom sampled at world positions: background 0, 'fluid' core, 'tissue' shell."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = xyz.T
    head = (x / 34.0) ** 2 + (y / 42.0) ** 2 + (z / 30.0) ** 2
    core = ((x - 6) / 12.0) ** 2 + (y / 16.0) ** 2 + (z / 10.0) ** 2
    white, grey, fluid = CONTRAST.get(sequence, CONTRAST["T1w"])
    texture = 0.5 + 0.5 * np.sin(x / 5.0) * np.cos(y / 7.0) * np.sin(z / 6.0 + 1.0)
    values = np.where(head < 1.0, grey + (white - grey) * texture, 0.0)
    values = np.where(core < 1.0, fluid, values)
    noise = np.random.default_rng(seed).normal(0.0, 5.0, values.shape)
    return np.clip(values + noise * (head < 1.2), 0, None).reshape(shape).astype(np.float32)


def write_image(path: Path, shape, spacing, sequence: str, codes: str = "RAS", rotation_deg: float = 0.0, seed: int = 0,
                sidecar: dict | None = None, dtype=np.int16) -> Path:
    """Write a phantom NIfTI (and its JSON sidecar when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = affine_for(spacing, shape, codes, rotation_deg)
    data = phantom(shape, affine, sequence, seed).astype(dtype)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def build_tree(root: Path) -> dict[str, Path]:
    """Write the test tree described in the module docstring; return named paths."""
    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "Demo Study", "BIDSVersion": "1.9.0"}))
    (bids / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3, "Manufacturer": "Siemens", "BodyPartExamined": "BRAIN"}))
    s1 = bids / "sub-01" / "ses-1" / "anat"
    paths = {"bids": bids, "plain": root / "plain"}
    paths["t1"] = write_image(s1 / "sub-01_ses-1_T1w.nii.gz", (50, 56, 44), (2.0, 2.0, 2.0), "T1w", seed=1,
                              sidecar={"RepetitionTime": 2.3, "EchoTime": 0.003, "InversionTime": 0.9, "FlipAngle": 9})
    paths["flair"] = write_image(s1 / "sub-01_ses-1_FLAIR.nii.gz", (40, 48, 18), (2.0, 2.0, 4.0), "FLAIR", seed=2,
                                 sidecar={"RepetitionTime": 9000, "EchoTime": 81, "InversionTime": 2500, "MagneticFieldStrength": 3})
    paths["t2"] = write_image(s1 / "sub-01_ses-1_T2w.nii.gz", (40, 48, 36), (2.0, 2.0, 2.0), "T2w", seed=3,
                              sidecar={"RepetitionTime": "3.2", "EchoTime": "long", "FlipAngle": [120, 120]})
    s2 = bids / "sub-02" / "anat"
    paths["s2_t1"] = write_image(s2 / "sub-02_T1w.nii.gz", (36, 44, 32), (2.0, 2.0, 2.0), "T1w", codes="LPS", seed=4, sidecar={"RepetitionTime": 2.0})
    paths["s2_t2"] = write_image(s2 / "sub-02_T2w.nii.gz", (36, 44, 32), (2.0, 2.0, 2.0), "T2w", codes="LPS", seed=5)
    s3 = bids / "sub-03" / "anat"
    s3.mkdir(parents=True)
    four_d = np.zeros((16, 16, 16, 3), np.int16)
    four_d[4:12, 4:12, 4:12] = 100
    paths["four_d"] = s3 / "sub-03_T1w.nii.gz"
    nib.save(nib.Nifti1Image(four_d, np.diag([2.0, 2.0, 2.0, 1.0])), paths["four_d"])
    paths["corrupt"] = write_image(s3 / "sub-03_T2w.nii.gz", (40, 48, 36), (2.0, 2.0, 2.0), "T2w", seed=6)
    raw = gzip.decompress(paths["corrupt"].read_bytes())
    paths["corrupt"].write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])  # truncated gzip stream
    write_image(bids / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz", (8, 8, 8), (3.0, 3.0, 3.0), "T2w")
    write_image(bids / "derivatives" / "sub-01" / "anat" / "sub-01_desc-brain_T1w.nii.gz", (8, 8, 8), (2.0, 2.0, 2.0), "T1w")
    plain = root / "plain"
    paths["mprage"] = write_image(plain / "patient_A" / "t1_mprage.nii.gz", (36, 40, 32), (2.0, 2.0, 2.0), "T1w", seed=7)
    paths["tse"] = write_image(plain / "patient_A" / "t2_tse.nii.gz", (36, 40, 32), (2.0, 2.0, 2.0), "T2w", seed=8,
                               sidecar={"SeriesDescription": "t2_tse_tra", "RepetitionTime": 4.0, "EchoTime": 0.1, "Manufacturer": "GE"})
    paths["scan7"] = write_image(plain / "patient_A" / "scan_7.nii.gz", (36, 40, 32), (2.0, 2.0, 2.0), "T1w", seed=9,
                                 sidecar={"RepetitionTime": 0.5, "EchoTime": 0.01})
    write_image(plain / "patient_A" / "seg.nii.gz", (36, 40, 32), (2.0, 2.0, 2.0), "T1w", dtype=np.uint8)
    paths["b_flair"] = write_image(plain / "patient_B" / "FLAIR.nii.gz", (36, 40, 32), (2.0, 2.0, 2.0), "FLAIR", seed=10)
    return paths


@pytest.fixture(scope="session")
def data_tree(tmp_path_factory) -> dict[str, Path]:
    """The tree of :func:`build_tree` plus its manifest (``paths['manifest']``), built once per test session."""
    from prism.data.scan import build_manifest

    root = tmp_path_factory.mktemp("mri")
    paths = build_tree(root)
    paths["manifest"] = root / "manifest.parquet"
    build_manifest([str(paths["bids"]), str(paths["plain"])], paths["manifest"])
    return paths


def by_id(frame, suffix: str) -> dict:
    """The manifest row whose volume_id ends with ``suffix``."""
    rows = frame[frame["volume_id"].str.endswith(suffix)]
    assert len(rows) == 1, f"{suffix}: {list(rows['volume_id'])}"
    return rows.iloc[0].to_dict()
