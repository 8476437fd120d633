"""Reading NIfTI volumes with one clear message per problem (shared by QC and preprocessing)."""

from __future__ import annotations

import os
import zlib

import nibabel as nib
import numpy as np


class VolumeError(Exception):
    """A volume that cannot be used; the message says what is wrong with which file."""


def open_image(path: str) -> nib.Nifti1Image:
    """Open a NIfTI header (no voxel data read).

    Raises:
        VolumeError: missing file or unreadable header.
    """
    if not os.path.exists(path):
        raise VolumeError(f"file not found: {path} (moved or deleted since the manifest was built?)")
    try:
        return nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise VolumeError(f"unreadable NIfTI header ({type(err).__name__}: {err})") from err


def read_data(image: nib.Nifti1Image) -> np.ndarray:
    """Decode all voxels as float32 (header scaling applied).

    Raises:
        VolumeError: truncated or corrupt data.
    """
    try:
        return np.asarray(image.get_fdata(dtype=np.float32, caching="unchanged"))
    except (EOFError, OSError, ValueError, zlib.error) as err:
        raise VolumeError(f"corrupt or truncated voxel data ({type(err).__name__}: {err})") from err


def as_3d(data: np.ndarray, sequence: str) -> tuple[np.ndarray, str | None]:
    """Reduce to 3D: drop trailing singleton axes; average a 4D diffusion series.

    Returns:
        ``(volume, note)``; ``note`` says when a diffusion series was averaged.

    Raises:
        VolumeError: a 4D (or higher) image of a sequence that should be 3D, or < 3 axes.
    """
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise VolumeError(f"{data.ndim}D image of shape {data.shape}; a 3D volume is needed")
    if data.ndim == 3:
        return data, None
    if sequence == "DWI" and data.ndim == 4:
        return data.mean(axis=3, dtype=np.float32), f"4D diffusion series of {data.shape[3]} volumes averaged"
    raise VolumeError(f"{data.ndim}D image of shape {data.shape} where a 3D {sequence or 'volume'} is expected")


def value_problems(data: np.ndarray) -> tuple[list[str], list[str]]:
    """``(failures, warnings)`` about voxel values: NaN/Inf, empty, constant volumes."""
    failures, warnings = [], []
    finite = np.isfinite(data)
    bad = data.size - int(finite.sum())
    if bad:
        message = f"{bad} NaN/Inf voxels ({100.0 * bad / data.size:.2g} %)"
        (failures if bad > 0.001 * data.size else warnings).append(message)
        data = data[finite]
    if data.size == 0 or not np.any(data):
        failures.append("empty volume (all voxels zero)")
    elif float(data.max()) == float(data.min()):
        failures.append(f"constant volume (every voxel = {float(data.min()):g})")
    return failures, warnings
