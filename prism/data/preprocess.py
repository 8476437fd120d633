"""``prism preprocess``: manifest -> store of canonical, resampled, normalised float16 volumes.

The unit of work is a session (dataset, subject, session). Its reference volume (T1w
first, then T2w, FLAIR, ...; the finest spacing among equals) defines the session grid:
RAS+ axes at the target spacing covering the reference's field of view, cropped to the
foreground. Every other volume of the session whose world field of view overlaps that
grid (their headers place them in the same scanner space) is resampled onto the same
grid, so its voxels line up with the reference's; a volume that does not overlap starts
a grid of its own. Volumes of one grid share a ``grid_id``; the sampler only combines
views that share it.

Runs are idempotent and resumable: a session whose volumes all carry the current
fingerprint (source files' size and mtime, settings) is skipped; a killed run leaves at
most unfinished sessions, which are redone. ``shard=(i, n)`` processes the sessions
whose key hashes to ``i`` modulo ``n``, so a SLURM array (``--shard $ID/$COUNT``)
splits the work without coordination. Volumes that cannot be made (missing, corrupt,
4D...) are recorded as failed with the reason, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from typing import Any, Iterator

import numpy as np
import pandas as pd

from prism.data.manifest import parse_triplet, usable_rows
from prism.data.resample import NORMALIZATIONS, Grid, canonical_grid, foreground_box, normalize_intensity, resample, world_overlap
from prism.data.store import VolumeStore
from prism.data.volume_io import VolumeError, as_3d, open_image, read_data, value_problems


log = logging.getLogger(__name__)

REFERENCE_PRIORITY = ("T1w", "T2w", "FLAIR", "PDw", "T2starw", "SWI", "MRA", "DWI", "other", "")


@dataclass(frozen=True)
class PreprocessSettings:
    """How volumes are preprocessed (stored in ``store.json``; a store holds one setting).

    Args:
        spacing: target voxel size in mm (x, y, z of the RAS+ output axes).
        dataset_spacing: per-dataset override of ``spacing``.
        crop_foreground: crop each grid to the reference's foreground bounding box.
        normalize: 'percentile' (divide by the foreground's ``percentile``-th percentile, clip
            to [0, ``clip_max``]: the scaling prism.synth uses), 'zscore' or 'none'.
        percentile, clip_max: parameters of the 'percentile' scaling.
        align_to_world: resample oblique acquisitions onto world axes (default keeps their rotation).
        min_overlap: fraction of field-of-view overlap above which two volumes of a session
            are taken to share world space and are put on one grid.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dataset_spacing: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    crop_foreground: bool = True
    normalize: str = "percentile"
    percentile: float = 99.5
    clip_max: float = 1.5
    align_to_world: bool = False
    min_overlap: float = 0.5

    def __post_init__(self) -> None:
        for name, value in [("spacing", self.spacing), *self.dataset_spacing.items()]:
            if len(value) != 3 or min(value) <= 0:
                raise ValueError(f"spacing for {name!r} must be 3 positive numbers in mm, got {value}.")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r} unknown; use one of {list(NORMALIZATIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``store.json`` records)."""
        content = asdict(self)
        content["spacing"] = [float(v) for v in self.spacing]
        content["dataset_spacing"] = {k: [float(x) for x in v] for k, v in sorted(self.dataset_spacing.items())}
        return content

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> "PreprocessSettings":
        content = dict(content)
        content["spacing"] = tuple(float(v) for v in content.get("spacing", (1.0, 1.0, 1.0)))
        content["dataset_spacing"] = {k: tuple(float(x) for x in v) for k, v in (content.get("dataset_spacing") or {}).items()}
        return cls(**content)

    def spacing_for(self, dataset: str) -> tuple[float, float, float]:
        return tuple(self.dataset_spacing.get(dataset, self.spacing))  # type: ignore[return-value]


@dataclass
class PreprocessSummary:
    """What a run did: sessions and volumes processed now, skipped as finished, and failed."""

    sessions: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.sessions} sessions: {self.processed} volumes written ({rate:.2f}/s), "
            f"{self.skipped} already finished, {self.failed} failed"
        )


def session_key(row: dict[str, Any]) -> str:
    return f"{row['dataset']}/{row['subject']}/{row['session']}"


def shard_of(key: str, num_shards: int) -> int:
    """The shard a session belongs to (stable hash, independent of manifest order)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % num_shards


def parse_shard(text: str) -> tuple[int, int]:
    """'3/10' -> (3, 10). Raises ValueError unless 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/4 (SLURM: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n.")
    return index, count


def preprocess_manifest(
    manifest: pd.DataFrame,
    store_root: str | os.PathLike,
    settings: PreprocessSettings,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
) -> PreprocessSummary:
    """Preprocess this shard's sessions of ``manifest`` (absolute paths) into the store.

    Rows that failed QC are left out (logged). Returns a summary; the store index part of
    this shard lists every finished and failed volume of its sessions.
    """
    started = time.perf_counter()
    store = VolumeStore(store_root)
    store.initialize(settings.to_dict())
    rows = usable_rows(manifest)
    duplicated = rows["volume_id"].duplicated()
    if duplicated.any():
        log.warning("%d manifest rows repeat a volume_id and are left out: %s", int(duplicated.sum()), list(rows["volume_id"][duplicated][:5]))
        rows = rows[~duplicated]
    sessions: dict[str, list[dict[str, Any]]] = {}
    for row in rows.to_dict("records"):
        key = session_key(row)
        if shard_of(key, shard[1]) == shard[0]:
            sessions.setdefault(key, []).append(row)
    tasks = [(key, volumes, str(store.root), settings.to_dict()) for key, volumes in sorted(sessions.items())]
    summary = PreprocessSummary(sessions=len(tasks))
    records: list[dict[str, Any]] = []
    for number, (session_records, counts) in enumerate(_run(tasks, workers), start=1):
        records.extend(session_records)
        summary.processed += counts["processed"]
        summary.skipped += counts["skipped"]
        summary.failed += counts["failed"]
        summary.failures.extend((r["volume_id"], r["reason"]) for r in session_records if r["status"] == "failed")
        if number % 100 == 0:
            log.info("%d / %d sessions, %d volumes written", number, len(tasks), summary.processed)
    store.write_index(f"shard-{shard[0]:05d}-of-{shard[1]:05d}", records)
    summary.seconds = time.perf_counter() - started
    return summary


def _run(tasks: list[tuple], workers: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, int]]]:
    if workers > 1 and len(tasks) > 1:
        with Pool(workers, maxtasksperchild=200) as pool:
            yield from pool.imap_unordered(process_session, tasks)
    else:
        yield from map(process_session, tasks)


def _fingerprint(volumes: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    items = []
    for row in sorted(volumes, key=lambda r: r["volume_id"]):
        try:
            stat = os.stat(row["path"])
            items.append([row["volume_id"], row["path"], row["sequence"], stat.st_size, stat.st_mtime_ns])
        except OSError:
            items.append([row["volume_id"], row["path"], row["sequence"], "missing"])
    return hashlib.blake2b(json.dumps([items, settings], sort_keys=True).encode(), digest_size=16).hexdigest()


def _reference_order(row: dict[str, Any]) -> tuple:
    sequence = row["sequence"] if row["sequence"] in REFERENCE_PRIORITY else "other"
    voxel = float(np.prod(parse_triplet(row["spacing"]))) if row["spacing"] else float("inf")
    return REFERENCE_PRIORITY.index(sequence), voxel, row["volume_id"]


def process_session(task: tuple[str, list[dict[str, Any]], str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preprocess one session (a worker task). Returns its index records and counts."""
    key, volumes, store_root, settings_dict = task
    store = VolumeStore(store_root)
    settings = PreprocessSettings.from_dict(settings_dict)
    fingerprint = _fingerprint(volumes, settings_dict)
    counts = {"processed": 0, "skipped": 0, "failed": 0}
    if all(store.status(v["volume_id"], fingerprint) != "todo" for v in volumes):
        records = [store.record(v["volume_id"]) for v in volumes]
        counts["skipped"] = sum(r["status"] == "done" for r in records)
        counts["failed"] = sum(r["status"] == "failed" for r in records)
        return records, counts
    for folder in {store.array_path(v["volume_id"]).parent for v in volumes}:
        store.remove_temporary(folder)
    groups: list[tuple[Grid, Grid, str, str]] = []  # (full grid, cropped grid, grid_id, reference volume_id)
    for row in sorted(volumes, key=_reference_order):
        volume_id = row["volume_id"]
        try:
            image = open_image(row["path"])
            data, note = as_3d(read_data(image), row["sequence"])
            failures, warnings = value_problems(data)
            if failures:
                raise VolumeError("; ".join(failures))
            if warnings:
                data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
            affine = image.affine
            group = next((g for g in groups if world_overlap(g[0], affine, data.shape) >= settings.min_overlap), None)
            if group is None:
                full = canonical_grid(affine, data.shape, settings.spacing_for(row["dataset"]), settings.align_to_world)
                grid, resampled = full, resample(data, affine, full)
                if settings.crop_foreground:
                    box = foreground_box(resampled)
                    grid, resampled = full.crop(box), resampled[box]
                group = (full, grid, f"{key}#{len(groups)}", volume_id)
                groups.append(group)
            else:
                resampled = resample(data, affine, group[1])
            resampled, stats = normalize_intensity(
                np.ascontiguousarray(resampled, dtype=np.float32), settings.normalize, settings.percentile, settings.clip_max
            )
            metadata = {
                "source_path": row["path"],
                "dataset": row["dataset"],
                "subject": row["subject"],
                "session": row["session"],
                "sequence": row["sequence"],
                "grid_id": group[2],
                "reference_volume_id": group[3],
                "affine": group[1].affine.tolist(),
                "spacing": list(group[1].spacing),
                "session_fingerprint": fingerprint,
                "intensity": stats,
                "notes": "; ".join(n for n in [note, *warnings] if n),
            }
            store.write_volume(volume_id, resampled, metadata)
            counts["processed"] += 1
        except Exception as err:  # noqa: BLE001 - one bad volume never stops the run
            reason = str(err) if isinstance(err, VolumeError) else f"{type(err).__name__}: {err}"
            store.write_failure(volume_id, reason, fingerprint)
            counts["failed"] += 1
            log.warning("%s: %s", volume_id, reason)
    return [store.record(v["volume_id"]) for v in volumes], counts


