"""Anatomy sources: soft tissue maps of real brains at a working voxel spacing.

Two sources:

* :class:`ICBM152Anatomy`: the MNI ICBM152 2009 template bundled in nilearn's wheel
  (skull-stripped T1, GM and WM probability maps, 197 x 233 x 189 at 1 mm; CSF is
  derived inside the brain mask as ``1 - GM - WM``). No network access.
* :class:`LabelMapAnatomy`: any integer label map in NIfTI plus a mapping
  ``label -> tissue name`` (a dict, or a YAML / JSON file), tissue names from
  ``prism.synth.tissues.TISSUES``.

Both give an :class:`AnatomyVolume`: probability maps ``[C, D, H, W]`` over C tissue
channels (the first is background; channels sum to 1), resampled once per process to
the working spacing and cached (lazily, on first use).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from prism.synth.tissues import TISSUE_LABELS, tissue_label

ICBM152_FILES = {
    kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
}


@dataclass(frozen=True)
class AnatomyVolume:
    """Soft tissue maps of one anatomy at one spacing.

    Attributes:
        maps: float32 ``[C, D, H, W]`` tissue probabilities (channel 0 = background).
        tissue_ids: label value (``prism.synth.tissues``) of each channel, length C.
        spacing_mm: isotropic voxel size of ``maps``.
        foreground_box_mm: ``[2, 3]`` min / max corner of the non-background region, in
            mm relative to the volume centre (axis order D, H, W).
    """

    maps: torch.Tensor
    tissue_ids: tuple[int, ...]
    spacing_mm: float
    foreground_box_mm: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.maps.shape[1:])  # type: ignore[return-value]


class Anatomy:
    """Base class: subclasses implement ``_load_maps`` returning 1 mm-or-native maps."""

    def volume(self, spacing_mm: float) -> AnatomyVolume:
        """The cached :class:`AnatomyVolume` at ``spacing_mm`` (computed on first call)."""
        if spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}.")
        return _cached_volume(self, float(spacing_mm))

    def _load_maps(self) -> tuple[np.ndarray, tuple[int, ...], tuple[float, float, float]]:
        """Return (maps [C, D, H, W] float32 summing to 1, tissue ids, native voxel size in mm)."""
        raise NotImplementedError

    # lru_cache keys: anatomies are equal when they describe the same source.
    def _key(self) -> tuple:
        raise NotImplementedError

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Anatomy) and self._key() == other._key()


class ICBM152Anatomy(Anatomy):
    """The ICBM152 2009 template bundled with nilearn: channels background, CSF, GM, WM."""

    def _key(self) -> tuple:
        return ("icbm152",)

    def _load_maps(self) -> tuple[np.ndarray, tuple[int, ...], tuple[float, float, float]]:
        import nibabel as nib
        import nilearn

        folder = Path(nilearn.__file__).parent / "datasets" / "data"
        arrays = {}
        for kind, name in ICBM152_FILES.items():
            path = folder / name
            if not path.exists():
                raise FileNotFoundError(
                    f"nilearn's bundled ICBM152 file {path} is missing; reinstall nilearn>=0.10.3 "
                    "(pip install --force-reinstall nilearn)."
                )
            arrays[kind] = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32) / 255.0
        brain = (arrays["t1"] > 0).astype(np.float32)
        gm, wm = arrays["gm"] * brain, arrays["wm"] * brain
        total = gm + wm
        scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0).astype(np.float32)
        gm, wm = gm * scale, wm * scale
        csf = np.clip(brain - gm - wm, 0, 1)
        background = 1.0 - brain
        maps = np.stack([background, csf, gm, wm])
        ids = tuple(TISSUE_LABELS[t] for t in ("background", "csf", "gm", "wm"))
        return maps, ids, (1.0, 1.0, 1.0)


class LabelMapAnatomy(Anatomy):
    """A user label map (NIfTI, integer labels) with a ``label -> tissue name`` mapping.

    Args:
        path: NIfTI file of integer labels (3D; trailing singleton axes are dropped).
        mapping: ``{label: tissue_name}`` or a path to a YAML / JSON file holding it.
            Tissue names come from ``prism.synth.tissues.TISSUES`` (e.g. csf, gm, wm,
            fat, lesion_wmh, tumour, necrosis, background). Several labels may share a
            tissue. Orientation is taken as stored (RAS-like templates look right).

    Raises:
        FileNotFoundError: the label map or mapping file does not exist.
        ValueError: unknown tissue names (named), labels present in the image but missing
            from the mapping (listed), a non-3D image, or non-integer values.
    """

    def __init__(self, path: str | os.PathLike, mapping: Mapping[int | str, str] | str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"Label map {self.path} does not exist; pass an existing NIfTI file.")
        self.mapping = _read_mapping(mapping)

    def _key(self) -> tuple:
        return ("labelmap", str(self.path.resolve()), tuple(sorted(self.mapping.items())))

    def _load_maps(self) -> tuple[np.ndarray, tuple[int, ...], tuple[float, float, float]]:
        import nibabel as nib

        image = nib.load(str(self.path))
        data = np.asarray(image.dataobj)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(
                f"Label map {self.path} has shape {data.shape}; a 3D label volume is needed "
                "(pick one volume of a 4D file first)."
            )
        if not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
                raise ValueError(f"Label map {self.path} holds non-integer values; save integer labels.")
        labels = data.astype(np.int64)
        present = set(np.unique(labels).tolist())
        missing = sorted(present - set(self.mapping))
        if missing:
            raise ValueError(
                f"Label map {self.path} contains labels {missing} that the mapping does not name; "
                f"add them to the mapping (e.g. {missing[0]}: background)."
            )
        tissue_of_label = {lab: self.mapping[lab] for lab in present}
        ids = sorted(set(tissue_of_label.values()) | {TISSUE_LABELS["background"]})
        maps = np.zeros((len(ids), *labels.shape), dtype=np.float32)
        for lab, tissue in tissue_of_label.items():
            maps[ids.index(tissue)][labels == lab] = 1.0
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
        return maps, tuple(ids), zooms  # type: ignore[return-value]


def _read_mapping(mapping: Mapping[int | str, str] | str | os.PathLike) -> dict[int, int]:
    """Parse ``{label: tissue}`` (dict or YAML/JSON file) into ``{label: tissue label value}``."""
    if isinstance(mapping, (str, os.PathLike)):
        path = Path(mapping)
        if not path.exists():
            raise FileNotFoundError(f"Label mapping file {path} does not exist; write a YAML or JSON label->tissue map.")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            mapping = json.loads(text)
        else:
            import yaml

            mapping = yaml.safe_load(text)
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError("The label mapping must be a non-empty {label: tissue_name} mapping.")
    parsed: dict[int, int] = {}
    for label, tissue in mapping.items():
        try:
            key = int(label)
        except (TypeError, ValueError):
            raise ValueError(f"Mapping key {label!r} is not an integer label value.") from None
        try:
            parsed[key] = tissue_label(tissue)
        except ValueError as err:
            raise ValueError(f"Mapping entry {label}: {err}") from None
    return parsed


@lru_cache(maxsize=8)
def _cached_volume(anatomy: Anatomy, spacing_mm: float) -> AnatomyVolume:
    maps_np, ids, zooms = anatomy._load_maps()
    maps = torch.from_numpy(np.ascontiguousarray(maps_np))
    size = [max(2, int(round(n * z / spacing_mm))) for n, z in zip(maps.shape[1:], zooms)]
    if list(maps.shape[1:]) != size:
        downsampling = all(s <= n for s, n in zip(size, maps.shape[1:]))
        mode = "area" if downsampling else "trilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        maps = F.interpolate(maps[None], size=size, mode=mode, **kwargs)[0]
    maps = maps.clamp_min(0)
    maps = maps / maps.sum(0, keepdim=True).clamp_min(1e-6)
    foreground = maps[0] < 0.5
    box = torch.zeros(2, 3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = foreground.any(dim=other[1]).any(dim=other[0]).nonzero()
        n = maps.shape[1 + axis]
        low, high = (hits.min().item(), hits.max().item()) if len(hits) else (0, n - 1)
        box[0, axis] = (low - (n - 1) / 2) * spacing_mm
        box[1, axis] = (high - (n - 1) / 2) * spacing_mm
    return AnatomyVolume(maps.contiguous(), tuple(int(i) for i in ids), spacing_mm, box)
