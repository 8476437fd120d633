"""``prism embed CKPT --manifest M --out F.parquet``: one embedding per volume and per subject.

Each usable manifest row (QC status not ``fail``) is read with nibabel, resampled onto the
RAS+ grid at the encoder's pretraining spacing, cropped to its foreground, scaled like the
pretraining data (``prism export``'s ``normalization``), tiled into windows of the
pretraining crop (zero-padded), and encoded; the volume embedding is the mean of the tokens
of all its windows. A subject's embedding is the mean of its volumes' embeddings.

The Parquet file has one row per volume (``level == "volume"``) and one per subject
(``level == "subject"``, ``sequence`` and ``volume_id`` empty) with the manifest's
``volume_id, dataset, subject, session, sequence, path``, ``num_volumes``, ``embedding``
(a list of floats), ``feature_source``, ``config_hash`` and ``error`` (why a volume could
not be embedded; its embedding is then null and it does not count towards its subject).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prism.data.manifest import read_manifest, usable_rows
from prism.data.resample import canonical_grid, foreground_box, normalize_intensity, resample
from prism.data.volume_io import VolumeError, as_3d, open_image, read_data, value_problems
from prism.finetune.backbone import Backbone
from prism.finetune.checkpoint import load_backbone

log = logging.getLogger(__name__)

ID_COLUMNS = ("volume_id", "dataset", "subject", "session", "sequence", "path")


def window_starts(length: int, window: int) -> list[int]:
    """Starts of the non-overlapping windows that cover ``length`` (the last one padded)."""
    return list(range(0, max(length, 1), window))


def prepare_volume(path: str, sequence: str, spacing_mm: float | Sequence[float], normalization: dict[str, Any]) -> np.ndarray:
    """Read, resample to ``spacing_mm`` (RAS+), crop to the foreground and scale one volume.

    Raises:
        VolumeError: unreadable, empty, constant or NaN-ridden volume.
    """
    image = open_image(path)
    data, _ = as_3d(read_data(image), sequence)
    failures, _ = value_problems(data)
    if failures:
        raise VolumeError("; ".join(failures))
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    spacing = tuple(float(s) for s in spacing_mm) if isinstance(spacing_mm, (list, tuple)) else (float(spacing_mm),) * 3
    grid = canonical_grid(image.affine, data.shape, spacing)
    volume = resample(data, image.affine, grid)
    volume = np.ascontiguousarray(volume[foreground_box(volume)], dtype=np.float32)
    volume, _ = normalize_intensity(volume, normalization.get("mode", "percentile"), float(normalization.get("percentile", 99.5)),
                                    float(normalization.get("clip_max", 1.5)))
    return volume


@torch.no_grad()
def embed_volume(backbone: Backbone, volume: np.ndarray, crop: tuple[int, int, int], batch_size: int = 4) -> np.ndarray:
    """Mean token feature ``[F]`` over the crop-sized windows tiling ``volume``."""
    device = next(backbone.parameters()).device
    windows = []
    for i in window_starts(volume.shape[0], crop[0]):
        for j in window_starts(volume.shape[1], crop[1]):
            for k in window_starts(volume.shape[2], crop[2]):
                window = np.zeros(crop, np.float32)
                part = volume[i : i + crop[0], j : j + crop[1], k : k + crop[2]]
                window[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                windows.append(window)
    total, count = None, 0
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.stack(windows[start : start + batch_size])).unsqueeze(1).to(device)
        tokens = backbone(batch)["tokens"]
        summed = tokens.sum(dim=(0, 1))
        total = summed if total is None else total + summed
        count += tokens.shape[0] * tokens.shape[1]
    return (total / count).float().cpu().numpy()


def embed_manifest(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    feature_source: str = "encoder",
    data_root: str | None = None,
    batch_size: int = 4,
    device: str = "cpu",
) -> pd.DataFrame:
    """Embed every usable volume of ``manifest`` and write ``out`` (Parquet); returns the table.

    Raises:
        FileNotFoundError / ValueError: bad checkpoint, manifest or output path.
    """
    out = Path(out)
    if out.suffix != ".parquet":
        raise ValueError(f"--out {out} must end in .parquet.")
    backbone = load_backbone(checkpoint, feature_source=feature_source, frozen=True).to(device).eval()
    meta = backbone.metadata
    spacing = meta.get("spacing_mm") or 1.0  # one value (isotropic) or three (mm, RAS+)
    crop = tuple(int(c) for c in (meta.get("crop_size") or meta["encoder"]["img_size"]))
    normalization = meta.get("normalization") or {}
    rows = usable_rows(read_manifest(manifest, data_root))
    records = []
    for row in rows.to_dict("records"):
        record = {c: row.get(c, "") for c in ID_COLUMNS} | {"level": "volume", "num_volumes": 1, "embedding": None, "error": ""}
        try:
            volume = prepare_volume(row["path"], row.get("sequence", ""), spacing, normalization)
            record["embedding"] = embed_volume(backbone, volume, crop, batch_size)
        except VolumeError as err:
            record["error"] = str(err)
            log.warning("%s: not embedded (%s)", row.get("volume_id", row["path"]), err)
        records.append(record)
    volumes = pd.DataFrame(records, columns=["level", *ID_COLUMNS, "num_volumes", "embedding", "error"])
    table = pd.concat([volumes, subject_embeddings(volumes)], ignore_index=True)
    table["feature_source"] = feature_source
    table["config_hash"] = meta.get("config_hash") or ""
    table["embedding"] = [None if e is None else np.asarray(e, np.float32) for e in table["embedding"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    return table


def subject_embeddings(volumes: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, subject): the mean embedding of its embedded volumes."""
    embedded = volumes[volumes["embedding"].notna()]
    rows = []
    for (dataset, subject), group in embedded.groupby(["dataset", "subject"], sort=True):
        rows.append({"level": "subject", "volume_id": "", "dataset": dataset, "subject": subject, "session": "", "sequence": "",
                     "path": "", "num_volumes": len(group), "embedding": np.mean(np.stack(group["embedding"].tolist()), axis=0), "error": ""})
    return pd.DataFrame(rows, columns=volumes.columns)
