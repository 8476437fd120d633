"""Write synthetic subjects as a BIDS-style dataset (NIfTI + JSON sidecars).

Layout::

    OUT/dataset_description.json
    OUT/participants.tsv
    OUT/sub-001/anat/sub-001_acq-MPRAGE_T1w.nii.gz   (+ .json sidecar)
    OUT/sub-001/anat/sub-001_T2w.nii.gz              (+ .json)
    OUT/derivatives/prism-synth/dataset_description.json
    OUT/derivatives/prism-synth/dseg.tsv
    OUT/derivatives/prism-synth/sub-001/anat/sub-001_dseg.nii.gz

Recipes named ``<suffix>_<variant>`` (``T1w_MPRAGE``) get an ``acq-<variant>`` entity;
STIR, which has no BIDS suffix, is written as ``acq-STIR_T2w``. Sidecars carry the
BIDS acquisition fields in seconds / degrees / tesla (InversionTime only for
inversion-recovery sequences) plus ``PrismRecipe`` and ``PrismSequenceType`` (the
``prism.sequences`` type the synthetic batches report).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from prism.sequences import ACQUISITION_PARAMETERS
from prism.synth.preview import SubjectSet
from prism.synth.recipes import get_recipe
from prism.synth.tissues import TISSUES

INTENSITY_SCALE = 1000.0
"""Normalised intensities (0 .. ~1.5) are stored as int16 x 1000."""

SCANNING_SEQUENCE = {"spin_echo": "SE", "inversion_recovery": "IR", "mprage": "IR\\GR", "spoiled_gre": "GR"}


def bids_name(recipe_name: str) -> tuple[str | None, str]:
    """``(acq label or None, BIDS suffix)`` of a recipe."""
    recipe = get_recipe(recipe_name)
    if recipe.bids_suffix == "STIR":
        return "STIR", "T2w"
    if "_" in recipe.name:
        return recipe.name.split("_", 1)[1], recipe.bids_suffix
    return None, recipe.bids_suffix


def sidecar(recipe_name: str, params: torch.Tensor, present: torch.Tensor) -> dict:
    """The JSON sidecar of one image: BIDS acquisition fields where present, plus prism fields."""
    recipe = get_recipe(recipe_name)
    out: dict = {}
    for name, value, known in zip(ACQUISITION_PARAMETERS, params.tolist(), present.tolist()):
        if known:
            out[name] = round(float(value), 6)
    out.update(
        Manufacturer="prism-synth",
        ScanningSequence=SCANNING_SEQUENCE[recipe.family],
        SeriesDescription=recipe.name,
        PrismRecipe=recipe.name,
        PrismSequenceType=recipe.sequence_type,
    )
    return out


def _affine(spacing_mm: float, shape: tuple[int, ...]) -> np.ndarray:
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * spacing_mm for n in shape]
    return affine


def write_bids(subjects: SubjectSet, out_dir: str | Path, spacing_mm: float, start_index: int = 1) -> list[Path]:
    """Write every subject and recipe of ``subjects`` under ``out_dir``; returns the image paths."""
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "prism synthetic multi-sequence MRI", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "prism synth"}],
    }, indent=2))
    derivatives = out / "derivatives" / "prism-synth"
    derivatives.mkdir(parents=True, exist_ok=True)
    (derivatives / "dataset_description.json").write_text(json.dumps({
        "Name": "prism synthetic labels", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "prism synth"}],
    }, indent=2))
    (derivatives / "dseg.tsv").write_text(
        "index\tname\tdescription\n" + "".join(f"{t.label}\t{t.name}\t{t.description}\n" for t in TISSUES)
    )
    rows = ["participant_id\tMagneticFieldStrength"]
    written: list[Path] = []
    for s in range(subjects.images.shape[0]):
        subject = f"sub-{start_index + s:03d}"
        rows.append(f"{subject}\t{float(subjects.field_strength[s]):.1f}")
        anat = out / subject / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for r, recipe in enumerate(subjects.recipes):
            acq, suffix = bids_name(recipe)
            stem = f"{subject}_acq-{acq}_{suffix}" if acq else f"{subject}_{suffix}"
            volume = (subjects.images[s, r].numpy() * INTENSITY_SCALE).round().astype(np.int16)
            shape = volume.shape
            path = anat / f"{stem}.nii.gz"
            nib.save(nib.Nifti1Image(volume, _affine(spacing_mm, shape)), str(path))
            (anat / f"{stem}.json").write_text(
                json.dumps(sidecar(recipe, subjects.acq_params[s, r], subjects.acq_present[s, r]), indent=2)
            )
            written.append(path)
        seg_dir = derivatives / subject / "anat"
        seg_dir.mkdir(parents=True, exist_ok=True)
        labels = subjects.labels[s].numpy().astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, _affine(spacing_mm, labels.shape)), str(seg_dir / f"{subject}_dseg.nii.gz"))
    (out / "participants.tsv").write_text("\n".join(rows) + "\n")
    return written
