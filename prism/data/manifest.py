"""The volume manifest: one row per MRI volume, the table every data step reads.

A manifest is a ``pandas.DataFrame`` stored as Parquet (CSV is read and written too).
``prism manifest build`` creates it from BIDS trees and plain NIfTI folders, ``prism qc``
adds ``qc_status``/``qc_reason``, ``prism preprocess`` turns it into a crop store, and
``ManifestDataModule`` samples from it. Users may also write a CSV by hand: only
``dataset``, ``subject`` and ``path`` are required, every other column is filled with
"unknown".

Paths: in memory (after :func:`read_manifest`) every ``path`` is absolute. On disk a path
is written relative to the manifest file's folder when the file lies below it (so a
manifest and its data move together), otherwise absolute; ``relative_to`` writes paths
relative to another root (read them back with ``data_root=``, e.g. ``${paths.data_dir}``).

Unknown values stay empty (``""`` or NaN): nothing is guessed without saying how
(``sequence_source``/``sequence_evidence``) and nothing is invented.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_ALIASES, SEQUENCE_TYPES

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: dict[str, str] = {
    "volume_id": "unique id of the volume: '<dataset>/<path below the scanned root, without extension>'",
    "dataset": "study / dataset name (BIDS dataset_description Name, --dataset, or the root folder name)",
    "subject": "subject label (BIDS 'sub-' entity without the prefix; plain folders: first folder below the root)",
    "session": "session label (BIDS 'ses-' entity without the prefix); '' when the study has no sessions",
    "sequence": f"one of {list(SEQUENCE_TYPES)}; '' when unknown",
    "sequence_source": "how 'sequence' was inferred: bids_suffix | filename | sidecar | manual | unknown",
    "sequence_evidence": "the evidence, e.g. \"BIDS suffix 'T1w'\" or \"TR=0.45 s, TE=0.012 s\"",
    "path": "NIfTI file (.nii/.nii.gz); relative to the manifest folder (or to data_root), or absolute",
    "sidecars": "';'-joined JSON sidecars merged into this row, in inheritance order (same path rules)",
    "entities": "BIDS entities of the file name as JSON (e.g. {\"acq\": \"mprage\", \"run\": \"1\"}); '' outside BIDS",
    "shape": "voxel grid from the header, 'XxYxZ' ('XxYxZxT' for 4D); '' when the header is unreadable",
    "spacing": "voxel size in mm from the header, 'sxXsyXsz'; '' when unreadable",
    "orientation": "voxel axis directions from the affine, e.g. 'RAS' or 'LPS'; '' when unreadable",
    "RepetitionTime": "seconds; NaN when unknown",
    "EchoTime": "seconds; NaN when unknown",
    "InversionTime": "seconds; NaN when unknown",
    "FlipAngle": "degrees; NaN when unknown",
    "MagneticFieldStrength": "tesla; NaN when unknown",
    "Manufacturer": "scanner manufacturer from the sidecar; '' when unknown",
    "body_part": "lower-case body part (sidecar BodyPart / BodyPartExamined, or --body-part); '' when unknown",
    "notes": "'; '-joined remarks made while building (unit conversions, bad sidecar values, unreadable header)",
    "qc_status": "'' (not checked) | pass | warn | fail, set by `prism qc`; 'fail' rows are excluded downstream",
    "qc_reason": "'; '-joined QC findings",
}
"""Manifest columns, in order, with their meaning (the schema documented in the README)."""

NUMERIC_COLUMNS: tuple[str, ...] = tuple(p for p in ACQUISITION_PARAMETERS)
TEXT_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c not in NUMERIC_COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = ("dataset", "subject", "path")
SEQUENCE_SOURCES: tuple[str, ...] = ("bids_suffix", "filename", "sidecar", "manual", "unknown")
QC_STATUSES: tuple[str, ...] = ("", "pass", "warn", "fail")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str:
    """``'a/sub-01_T1w.nii.gz'`` -> ``'a/sub-01_T1w'``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def add_note(notes: str, note: str) -> str:
    """Append ``note`` to a '; '-joined notes string."""
    return f"{notes}; {note}" if notes else note


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and every column typed."""
    return conform_columns(pd.DataFrame({c: [] for c in MANIFEST_COLUMNS}))


def conform_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Add missing schema columns (empty / NaN), type them, and put schema columns first."""
    frame = frame.copy()
    for column in TEXT_COLUMNS:
        if column not in frame:
            frame[column] = ""
        frame[column] = [_text(v) for v in frame[column]]
    for column in NUMERIC_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    return frame[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)


def _text(value: object) -> str:
    """A cell as text: missing values (None, NaN) become ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def make_volume_id(dataset: str, relative_path: str) -> str:
    """The stable id of a volume: dataset plus its path below the scanned root, extension removed."""
    return f"{dataset}/{strip_nifti_suffix(relative_path.replace(os.sep, '/'))}"


def short_hash(text: str, length: int = 10) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


# ----------------------------------------------------------------------------- reading


def read_manifest(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read and validate a manifest (Parquet or CSV); returned paths are absolute.

    Args:
        path: ``.parquet`` or ``.csv`` manifest.
        data_root: root for relative paths; default the manifest's own folder.

    Raises:
        FileNotFoundError: the manifest does not exist (the message says how to build one).
        ValueError: a required column is missing or a row lacks dataset / subject / path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Manifest {path} does not exist. Build one with `prism manifest build DATA_ROOT --out {path}` "
            "(see README, 'Real data')."
        )
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"Manifest {path} must end in .parquet or .csv.")
    root = Path(os.path.abspath(data_root if data_root else path.parent))  # abspath, like the scan: no symlink resolution
    return validate_manifest(frame, root=root, origin=str(path))


def validate_manifest(frame: pd.DataFrame, root: Path | None = None, origin: str = "manifest") -> pd.DataFrame:
    """Check required columns, fill the rest, normalise sequences and units, resolve paths.

    Problems in single rows never stop the run: they are appended to that row's ``notes``
    (and reported by ``prism qc``). Only a missing required column is an error.
    """
    from prism.data.bids import normalize_parameter  # local: bids imports this module

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{origin} lacks the required column(s) {missing}; a manifest needs at least "
            f"{list(REQUIRED_COLUMNS)} (full schema: prism.data.manifest.MANIFEST_COLUMNS)."
        )
    frame = conform_columns(frame)
    empty = frame[list(REQUIRED_COLUMNS)].eq("").any(axis=1)
    if empty.any():
        rows = list(frame.index[empty][:5])
        raise ValueError(f"{origin}: rows {rows} have an empty dataset, subject or path; fill them in or delete them.")
    if root is not None:
        frame["path"] = [_absolute(p, root) for p in frame["path"]]
        frame["sidecars"] = [";".join(_absolute(s, root) for s in v.split(";")) if v else "" for v in frame["sidecars"]]
    no_id = frame["volume_id"].eq("")
    frame.loc[no_id, "volume_id"] = [
        make_volume_id(d, _relative(p, root, False) if root is not None else p)
        for d, p in zip(frame.loc[no_id, "dataset"], frame.loc[no_id, "path"])
    ]
    notes = list(frame["notes"])
    sequences, sources = list(frame["sequence"]), list(frame["sequence_source"])
    for i, (name, source) in enumerate(zip(sequences, sources)):
        canonical, note = normalize_sequence_name(name)
        if note:
            notes[i] = add_note(notes[i], note)
        sequences[i] = canonical
        if canonical == "":
            sources[i] = "unknown"
        elif source not in SEQUENCE_SOURCES or source == "unknown":
            sources[i] = "manual"
    frame["sequence"], frame["sequence_source"] = sequences, sources
    for column in NUMERIC_COLUMNS:
        values = []
        for i, raw in enumerate(frame[column]):
            value, note = normalize_parameter(column, raw)
            if note:
                notes[i] = add_note(notes[i], note)
            values.append(value)
        frame[column] = np.asarray(values, dtype=np.float64)
    frame["notes"] = notes
    bad_qc = ~frame["qc_status"].isin(QC_STATUSES)
    if bad_qc.any():
        raise ValueError(f"{origin}: qc_status must be one of {list(QC_STATUSES)}; found {sorted(set(frame['qc_status'][bad_qc]))}.")
    return frame


def normalize_sequence_name(name: str) -> tuple[str, str | None]:
    """Map a sequence name or alias to the vocabulary; unknown names become '' with a note."""
    name = (name or "").strip()
    if name == "" or name in SEQUENCE_TYPES:
        return name, None
    canonical = SEQUENCE_ALIASES.get(name.lower())
    if canonical is None:
        return "", f"unknown sequence name {name!r} (not one of {list(SEQUENCE_TYPES)}): treated as unknown"
    return canonical, None


def _absolute(path: str, root: Path) -> str:
    if not path:
        return path
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


# ----------------------------------------------------------------------------- writing


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> Path:
    """Write a manifest atomically (temporary file, then rename).

    Args:
        frame: manifest with absolute paths (as returned by :func:`read_manifest`).
        path: output ``.parquet`` or ``.csv``.
        relative_to: write paths relative to this root; default: relative to the manifest
            folder for files below it, absolute otherwise.
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"Output manifest {path} must end in .parquet or .csv.")
    path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.abspath(relative_to if relative_to else path.parent))
    force = relative_to is not None
    frame = conform_columns(frame)
    frame["path"] = [_relative(p, root, force) for p in frame["path"]]
    frame["sidecars"] = [";".join(_relative(s, root, force) for s in v.split(";")) if v else "" for v in frame["sidecars"]]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def stores_relative_paths(path: str | os.PathLike) -> bool:
    """Whether the manifest file ``path`` lists its volumes by relative paths only.

    Commands that rewrite a manifest (``prism qc``, ``filter``, ``merge``) keep such paths
    relative (to the folder of the manifest they write), so the data and the manifest can
    still move together.
    """
    path = Path(path)
    paths = pd.read_csv(path, usecols=["path"], dtype=str, keep_default_na=False)["path"] if path.suffix == ".csv" else pd.read_parquet(path, columns=["path"])["path"]
    return len(paths) > 0 and not any(os.path.isabs(p) for p in paths)


def _relative(path: str, root: Path, force: bool) -> str:
    if not path or not os.path.isabs(path):
        return path
    relative = os.path.relpath(path, root)
    if force or not relative.startswith(".."):
        return relative.replace(os.sep, "/")
    return path


# ----------------------------------------------------------------------------- merge / filter


def merge_manifests(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate manifests (absolute paths). Duplicate volumes are kept and logged; ``prism qc`` flags them."""
    merged = conform_columns(pd.concat([conform_columns(f) for f in frames], ignore_index=True))
    duplicated = merged["path"].duplicated(keep="first") | merged["volume_id"].duplicated(keep="first")
    if duplicated.any():
        log.warning("merged manifest lists %d volumes twice (same path or volume_id); `prism qc` marks the repeats as failed", int(duplicated.sum()))
    return merged


def filter_manifest(
    frame: pd.DataFrame,
    datasets: list[str] | None = None,
    sequences: list[str] | None = None,
    body_parts: list[str] | None = None,
    qc: list[str] | None = None,
) -> pd.DataFrame:
    """Keep rows matching every given criterion (each a list of accepted values).

    ``sequences`` accepts vocabulary names and aliases (``mprage`` -> T1w) and ``unknown``;
    ``qc`` accepts pass / warn / fail / unchecked.

    Raises:
        ValueError: an unknown sequence or QC status, naming the accepted values.
    """
    keep = pd.Series(True, index=frame.index)
    if datasets:
        unknown = sorted(set(datasets) - set(frame["dataset"]))
        if unknown:
            log.warning("datasets %s do not occur in the manifest (it has %s)", unknown, sorted(set(frame["dataset"])))
        keep &= frame["dataset"].isin(datasets)
    if sequences:
        wanted = set()
        for name in sequences:
            if name == "unknown":
                wanted.add("")
                continue
            canonical, note = normalize_sequence_name(name)
            if note:
                raise ValueError(f"--sequence {name!r} is not a sequence type; use one of {list(SEQUENCE_TYPES)} or 'unknown'.")
            wanted.add(canonical)
        keep &= frame["sequence"].isin(wanted)
    if body_parts:
        keep &= frame["body_part"].str.lower().isin([b.lower() for b in body_parts])
    if qc:
        mapping = {"pass": "pass", "warn": "warn", "fail": "fail", "unchecked": ""}
        bad = [q for q in qc if q not in mapping]
        if bad:
            raise ValueError(f"--qc {bad} unknown; use any of {list(mapping)}.")
        keep &= frame["qc_status"].isin([mapping[q] for q in qc])
    return frame[keep].reset_index(drop=True)


def usable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that downstream steps use: every row whose ``qc_status`` is not 'fail' (logged)."""
    failed = frame["qc_status"].eq("fail")
    if failed.any():
        log.info("excluding %d of %d volumes that failed QC (see qc_reason)", int(failed.sum()), len(frame))
    return frame[~failed].reset_index(drop=True)


# ----------------------------------------------------------------------------- header fields


def format_triplet(values: Iterable[float | int]) -> str:
    """(1.0, 1.0, 1.2) -> '1x1x1.2'."""
    return "x".join(f"{v:g}" for v in values)


def parse_triplet(text: str) -> tuple[float, ...]:
    """'1x1x1.2' -> (1.0, 1.0, 1.2); '' -> ()."""
    return tuple(float(v) for v in text.split("x")) if text else ()
