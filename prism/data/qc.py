"""``prism qc``: check every volume of a manifest and write a report.

Each row gets ``qc_status`` (pass / warn / fail) and ``qc_reason`` (every finding, '; '-joined).
``fail`` rows are excluded by preprocessing and sampling (with a logged count); nothing
stops the run. Checks:

* file: missing, unreadable header, corrupt or truncated data (fail);
* shape and geometry: 4D where 3D is expected (fail; a 4D DWI series is a warning), fewer
  than 8 or more than 2048 voxels on an axis, voxel size outside 0.1-15 mm, a singular or
  non-finite affine (fail), voxel anisotropy above 10 (warn);
* values: NaN/Inf (fail above 0.1 % of voxels, else warn), empty or constant (fail);
* header vs sidecar: sequence named by suffix / file name but sidecar TR/TE/TI say another
  contrast, SliceThickness far from every voxel size, ReconMatrixPE not an image axis (warn);
* manifest: duplicate path or volume_id (fail for the repeats), unknown sequence, and every
  note made while building (unit conversions, wrong sidecar types) (warn).

Results stream to ``OUT/qc.parts`` (resumable; ``shard`` splits the rows between jobs).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from prism.data.bids import SidecarResolver
from prism.data.parts import PartWriter
from prism.data.qc_report import save_thumbnail, write_report
from prism.data.sequence_inference import sequence_from_parameters
from prism.data.volume_io import VolumeError, as_3d, open_image, read_data, value_problems

log = logging.getLogger(__name__)

CONTRAST_SEQUENCES = ("T1w", "T2w", "FLAIR", "PDw")


def duplicate_findings(manifest: pd.DataFrame) -> dict[int, str]:
    """Row position -> finding, for rows repeating an earlier row's path or volume_id."""
    findings: dict[int, str] = {}
    for column in ("path", "volume_id"):
        first: dict[str, str] = {}
        for position, (value, volume_id) in enumerate(zip(manifest[column], manifest["volume_id"])):
            if value in first:
                findings.setdefault(position, f"duplicate: same {column} as {first[value]!r}")
            else:
                first[value] = volume_id
    return findings


def check_row(task: tuple[dict[str, Any], str | None, str | None, str]) -> dict[str, Any]:
    """Run every check on one manifest row; returns its QC result (never raises).

    Args:
        task: ``(row, thumbnail path or None, extra failure or None, thumbnail folder)``;
            flagged volumes always get a thumbnail, passing ones only when a path is given.
    """
    row, thumbnail_path, extra_failure, thumbnail_dir = task
    failures: list[str] = [extra_failure] if extra_failure else []
    warnings: list[str] = [f"manifest: {note}" for note in row["notes"].split("; ") if note]
    if not row["sequence"]:
        warnings.append("sequence unknown (set it in the manifest to use this volume as a known sequence)")
    thumbnail = ""
    try:
        image = open_image(row["path"])
        header_failures, header_warnings = _geometry_problems(image, row["sequence"])
        failures += header_failures
        warnings += header_warnings + _sidecar_problems(row, image)
        if not header_failures:
            volume, note = as_3d(read_data(image), row["sequence"])
            if note:
                warnings.append(note)
            value_failures, value_warnings = value_problems(volume)
            failures += value_failures
            warnings += value_warnings
            if thumbnail_path is not None or failures or warnings:
                thumbnail_path = thumbnail_path or os.path.join(thumbnail_dir, _thumbnail_name(row["volume_id"]))
                save_thumbnail(np.nan_to_num(volume), image.affine, thumbnail_path)
                thumbnail = thumbnail_path
    except VolumeError as err:
        failures.append(str(err))
    except Exception as err:  # noqa: BLE001 - report, never crash the QC run
        failures.append(f"unexpected error while checking ({type(err).__name__}: {err})")
    status = "fail" if failures else "warn" if warnings else "pass"
    return {"volume_id": row["volume_id"], "qc_status": status, "qc_reason": "; ".join(failures + warnings), "thumbnail": thumbnail}


def _thumbnail_name(volume_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in volume_id)[-80:]
    return f"{safe}.{hashlib.blake2b(volume_id.encode(), digest_size=4).hexdigest()}.png"


def _geometry_problems(image: Any, sequence: str) -> tuple[list[str], list[str]]:
    failures, warnings = [], []
    shape = tuple(int(n) for n in image.shape)
    extra = [n for n in shape[3:] if n != 1]
    if extra:
        message = f"4D image of shape {shape} where a 3D {sequence or 'volume'} is expected"
        (warnings if sequence == "DWI" and len(shape) == 4 else failures).append(
            message if sequence != "DWI" else f"4D DWI series of shape {shape}: preprocessing averages it"
        )
    if len(shape) < 3 or min(shape[:3]) < 8 or max(shape[:3]) > 2048:
        failures.append(f"absurd shape {shape}: each of the first 3 axes must have 8-2048 voxels")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    if not all(math.isfinite(z) and 0.1 <= z <= 15.0 for z in zooms):
        failures.append(f"absurd voxel size {zooms} mm: expected 0.1-15 mm")
    elif max(zooms) / min(zooms) > 10:
        warnings.append(f"very anisotropic voxels {zooms} mm")
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        failures.append("affine is singular or not finite (broken header)")
    return failures, warnings


def _sidecar_problems(row: dict[str, Any], image: Any) -> list[str]:
    if not row["sidecars"]:
        return []
    metadata, notes = SidecarResolver(os.path.dirname(row["path"])).load(row["sidecars"].split(";"))
    warnings = [f"sidecar: {n}" for n in notes]
    if row["sequence"] in CONTRAST_SEQUENCES and row["sequence_source"] in ("bids_suffix", "filename"):
        guess = sequence_from_parameters(*(row.get(k, math.nan) for k in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle")))
        if guess and guess[0] in CONTRAST_SEQUENCES and guess[0] != row["sequence"]:
            warnings.append(f"{row['sequence_source']} says {row['sequence']} but sidecar parameters suggest {guess[0]} ({guess[1]})")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    raw = metadata.get("SliceThickness")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        thickness = float(raw)
        if min(abs(z - thickness) for z in zooms) > 0.5 * thickness and thickness > 1.5 * max(zooms):
            warnings.append(f"sidecar SliceThickness {thickness:g} mm but header voxel sizes are {zooms} mm")
    matrix = metadata.get("ReconMatrixPE")
    if isinstance(matrix, int) and not isinstance(matrix, bool) and matrix not in tuple(image.shape[:3]):
        warnings.append(f"sidecar ReconMatrixPE {matrix} is not an image dimension of {tuple(image.shape[:3])}")
    return warnings


def run_qc(
    manifest: pd.DataFrame,
    out_dir: str | os.PathLike,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    sample_thumbnails: int = 24,
) -> pd.DataFrame | None:
    """Check the manifest's volumes; write the report when every row has a result.

    Args:
        manifest: manifest with absolute paths.
        out_dir: report folder (``qc_report.csv``, ``index.html``, ``thumbnails/``).
        workers: processes.
        shard: ``(i, n)``: check only rows ``i, i + n, ...`` (results from every shard are
            collected in ``out_dir/qc.parts``; the run that completes the set writes the report).
        sample_thumbnails: thumbnails of this many passing volumes (flagged ones always get one).

    Returns:
        The manifest with ``qc_status`` / ``qc_reason`` filled, or ``None`` while other
        shards' rows are still unchecked.
    """
    out_dir = Path(out_dir)
    thumbs = out_dir / "thumbnails"
    thumbs.mkdir(parents=True, exist_ok=True)
    parts = PartWriter(out_dir / "qc.parts", key="volume_id")
    done = parts.done_keys()
    duplicates = duplicate_findings(manifest)
    sampled = set(sorted(manifest["volume_id"], key=lambda v: hashlib.blake2b(v.encode(), digest_size=8).digest())[:sample_thumbnails])
    tasks = []
    for position, row in enumerate(manifest.to_dict("records")):
        key = f"{row['volume_id']}#{position}" if position in duplicates else row["volume_id"]
        if position % shard[1] != shard[0] or key in done:
            continue
        row = {**row, "volume_id": key}
        thumbnail = str(thumbs / _thumbnail_name(key))
        tasks.append((row, thumbnail if row["volume_id"] in sampled else None, duplicates.get(position), str(thumbs)))
    log.info("QC: %d volumes to check (%d already checked)", len(tasks), len(done))
    batch: list[dict[str, Any]] = []
    for result in _map(tasks, workers):
        batch.append(result)
        if len(batch) >= 200:
            parts.write(batch)
            batch = []
    parts.write(batch)
    results = parts.read_all().set_index("volume_id")
    keys = [f"{v}#{i}" if i in duplicates else v for i, v in enumerate(manifest["volume_id"])]
    missing = [k for k in keys if k not in results.index]
    if missing:
        log.info("QC: %d volumes still unchecked (other shards); the report is written when all are done", len(missing))
        return None
    checked = manifest.copy()
    checked["qc_status"] = [results.at[k, "qc_status"] for k in keys]
    checked["qc_reason"] = [results.at[k, "qc_reason"] for k in keys]
    thumbnails = [os.path.relpath(results.at[k, "thumbnail"], out_dir) if results.at[k, "thumbnail"] else "" for k in keys]
    write_report(checked, thumbnails, out_dir)
    parts.remove()
    return checked


def _map(tasks: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    if workers > 1 and len(tasks) > 1:
        with Pool(workers) as pool:
            yield from pool.imap_unordered(check_row, tasks, chunksize=4)
    else:
        yield from map(check_row, tasks)
