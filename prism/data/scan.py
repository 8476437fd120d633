"""Build a manifest by scanning BIDS trees and plain NIfTI folders (``prism manifest build``).

The walk is a single ``os.scandir`` pass (sorted, deterministic). Each NIfTI image found
becomes a row: BIDS entities from the file name, merged sidecars (see :mod:`prism.data.bids`),
header geometry (nibabel reads only the header), acquisition parameters in BIDS units and
the inferred sequence with its evidence. Header reads run in ``workers`` processes and rows
are streamed to part files (:mod:`prism.data.parts`), so a run over 100k files that is
killed resumes where it stopped; an existing output manifest is updated incrementally
(only new files are read) unless ``overwrite`` is set.

What is not turned into a row is listed, with the reason, in ``<out>.skipped.csv``:
label maps and masks, BIDS datatypes not asked for (``func``, ``fmap``...), and the
``derivatives`` / ``sourcedata`` folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import pandas as pd

from prism.data.bids import BidsName, SidecarResolver, normalize_parameter, parse_bids_name, text_field
from prism.data.manifest import (
    NIFTI_SUFFIXES,
    add_note,
    conform_columns,
    format_triplet,
    make_volume_id,
    read_manifest,
    strip_nifti_suffix,
    write_manifest,
)
from prism.data.parts import PartWriter
from prism.data.sequence_inference import infer_sequence, sequence_from_text
from prism.sequences import ACQUISITION_PARAMETERS

log = logging.getLogger(__name__)

DEFAULT_DATATYPES: tuple[str, ...] = ("anat", "dwi")
BIDS_DATATYPES = {"anat", "dwi", "func", "fmap", "perf", "swi", "beh", "eeg", "meg", "ieeg", "pet", "micr", "nirs", "motion"}
SKIPPED_FOLDERS = {"derivatives", "sourcedata", "code", "stimuli"}
_LABEL_WORDS = re.compile(r"(?<![a-z0-9])(seg|segmentation|mask|brainmask|label|labels|aseg|aparc|dseg|probseg|defacemask)(?![a-z0-9])")
_SESSION_FOLDER = re.compile(r"^(ses|session|visit|tp|timepoint)[-_]?[a-z0-9]+$", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """A NIfTI image to describe: where it is and which dataset / subject / session it belongs to."""

    path: str
    relative_path: str  # below the scanned root
    dataset: str
    sidecar_root: str  # BIDS dataset root, or the scanned root for plain folders
    subject: str
    session: str
    bids_suffix: str | None
    entities: dict[str, str]
    body_part: str


def _dataset_name(folder: str, override: str | None) -> str:
    if override:
        return override
    description = os.path.join(folder, "dataset_description.json")
    if os.path.isfile(description):
        try:
            with open(description, encoding="utf-8") as handle:
                name = json.load(handle).get("Name", "")
            if isinstance(name, str) and name.strip():
                return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip())
        except (OSError, ValueError, AttributeError):
            pass
    return os.path.basename(os.path.normpath(folder))


def discover(
    roots: list[str], dataset: str | None = None, datatypes: tuple[str, ...] = DEFAULT_DATATYPES, body_part: str = ""
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Walk ``roots``; return the images to describe and the skipped paths with reasons."""
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for root in roots:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Data root {root} is not a folder; pass folders that hold NIfTI files or BIDS datasets.")
        for path, bids_root in _walk(root, root if os.path.isfile(os.path.join(root, "dataset_description.json")) else None, skipped):
            item = _describe_location(path, root, bids_root, dataset, datatypes, body_part)
            if isinstance(item, str):
                skipped.append({"path": path, "reason": item})
            else:
                candidates.append(item)
    return candidates, skipped


def _walk(folder: str, bids_root: str | None, skipped: list[dict[str, str]]) -> Iterator[tuple[str, str | None]]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        skipped.append({"path": folder, "reason": f"folder unreadable: {err}"})
        return
    names = {e.name for e in entries}
    if "dataset_description.json" in names:
        bids_root = folder
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            if entry.name in SKIPPED_FOLDERS:
                skipped.append({"path": entry.path, "reason": f"'{entry.name}' folder is not scanned"})
                continue
            yield from _walk(entry.path, bids_root, skipped)
        elif entry.name.endswith(NIFTI_SUFFIXES):
            yield entry.path, bids_root


def _describe_location(
    path: str, root: str, bids_root: str | None, dataset: str | None, datatypes: tuple[str, ...], body_part: str
) -> Candidate | str:
    """A :class:`Candidate`, or the reason the file is skipped."""
    name = os.path.basename(path)
    parsed = parse_bids_name(name)
    parts = Path(os.path.relpath(path, root)).parts
    if parsed is not None and "sub" in parsed.entities:
        subject_folder = f"sub-{parsed.entities['sub']}"
        folders = Path(path).parent.parts
        if subject_folder in folders:
            dataset_root = bids_root or os.path.join(*folders[: len(folders) - folders[::-1].index(subject_folder) - 1])
            return _bids_candidate(path, root, dataset_root, parsed, dataset, datatypes, body_part)
    if _LABEL_WORDS.search(strip_nifti_suffix(name).lower()):
        return "looks like a label map or mask (file name), not an image"
    stem = strip_nifti_suffix(name)
    if len(parts) >= 2:
        subject = parts[0]
        session = parts[1] if len(parts) >= 3 and _SESSION_FOLDER.match(parts[1]) else ""
    else:  # flat folder: subject = file name without its sequence keyword (IXI002-Guys-0828-T1 -> IXI002-Guys-0828)
        found = sequence_from_text(stem)
        subject = stem
        if found:
            cut = re.sub(rf"(?i)[-_ .]*{re.escape(found[1])}[-_ .]*", "_", stem, count=1).strip("_")
            subject = cut or stem
        session = ""
    return Candidate(
        path=path,
        relative_path=os.path.relpath(path, root),
        dataset=_dataset_name(root, dataset),
        sidecar_root=root,
        subject=subject,
        session=session,
        bids_suffix=None,
        entities={},
        body_part=body_part,
    )


def _bids_candidate(
    path: str, root: str, dataset_root: str, parsed: BidsName, dataset: str | None, datatypes: tuple[str, ...], body_part: str
) -> Candidate | str:
    datatype = os.path.basename(os.path.dirname(path))
    if datatype in BIDS_DATATYPES and datatype not in datatypes:
        return f"BIDS datatype '{datatype}' not included (add it with --datatypes)"
    if _LABEL_WORDS.search(parsed.suffix.lower()):
        return f"BIDS suffix '{parsed.suffix}' is a mask or label map"
    return Candidate(
        path=path,
        relative_path=os.path.relpath(path, dataset_root),
        dataset=_dataset_name(dataset_root, dataset),
        sidecar_root=dataset_root,
        subject=parsed.entities["sub"],
        session=parsed.entities.get("ses", ""),
        bids_suffix=parsed.suffix,
        entities=dict(parsed.entities),
        body_part=body_part,
    )


_RESOLVERS: dict[str, SidecarResolver] = {}


def describe(candidate: Candidate) -> dict[str, Any]:
    """One manifest row for ``candidate``: header, sidecars, units, sequence (never raises)."""
    notes = ""
    resolver = _RESOLVERS.setdefault(candidate.sidecar_root, SidecarResolver(candidate.sidecar_root))
    bids = BidsName(candidate.entities, candidate.bids_suffix) if candidate.bids_suffix else None
    sidecars = resolver.applicable(candidate.path, bids)
    metadata, sidecar_notes = resolver.load(sidecars)
    for note in sidecar_notes:
        notes = add_note(notes, note)
    parameters: dict[str, float] = {}
    for name in ACQUISITION_PARAMETERS:
        value, note = normalize_parameter(name, metadata.get(name))
        parameters[name] = value
        if note:
            notes = add_note(notes, note)
    shape = spacing = orientation = ""
    try:
        image = nib.load(candidate.path)
        shape = format_triplet(image.shape)
        spacing = format_triplet(round(float(z), 5) for z in image.header.get_zooms()[:3])
        orientation = "".join(nib.aff2axcodes(image.affine))
    except Exception as err:  # noqa: BLE001 - any reader failure is reported, not raised
        notes = add_note(notes, f"header unreadable ({type(err).__name__}: {err})")
    guess = infer_sequence(candidate.path, candidate.relative_path, candidate.bids_suffix, metadata, parameters)
    body_part = text_field(metadata, "BodyPart", "BodyPartExamined").lower() or candidate.body_part
    return {
        "volume_id": make_volume_id(candidate.dataset, candidate.relative_path),
        "dataset": candidate.dataset,
        "subject": candidate.subject,
        "session": candidate.session,
        "sequence": guess.sequence,
        "sequence_source": guess.source,
        "sequence_evidence": guess.evidence,
        "path": candidate.path,
        "sidecars": ";".join(sidecars),
        "entities": json.dumps({k: v for k, v in candidate.entities.items() if k not in ("sub", "ses")}, sort_keys=True)
        if candidate.bids_suffix
        else "",
        "shape": shape,
        "spacing": spacing,
        "orientation": orientation,
        **parameters,
        "Manufacturer": text_field(metadata, "Manufacturer"),
        "body_part": body_part,
        "notes": notes,
        "qc_status": "",
        "qc_reason": "",
    }


def build_manifest(
    roots: list[str],
    out: str | os.PathLike,
    dataset: str | None = None,
    datatypes: tuple[str, ...] = DEFAULT_DATATYPES,
    body_part: str = "",
    workers: int = 1,
    batch_rows: int = 2000,
    overwrite: bool = False,
    relative_to: str | None = None,
) -> pd.DataFrame:
    """Scan ``roots`` and write the manifest to ``out`` (resumable, incremental).

    Args:
        roots: folders holding BIDS datasets and / or NIfTI files.
        out: output ``.parquet`` / ``.csv``; rows stream to ``<out>.parts/`` until the end.
        dataset: dataset name for every row (default: BIDS Name, else the root folder name).
        datatypes: BIDS datatype folders to include.
        body_part: body part for rows whose sidecar does not say ('' = unknown).
        workers: processes reading headers.
        batch_rows: rows per part file (the most a crash can lose).
        overwrite: rebuild from scratch instead of updating an existing ``out``.
        relative_to: write paths relative to this root (see :func:`write_manifest`).

    Returns:
        The manifest (absolute paths).
    """
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"Output manifest {out} must end in .parquet or .csv.")
    parts = PartWriter(out.with_name(out.name + ".parts"), key="path")
    if overwrite:
        parts.remove()
    previous = read_manifest(out, data_root=relative_to) if out.exists() and not overwrite else None
    candidates, skipped = discover(roots, dataset, datatypes, body_part)
    done = parts.done_keys() | (set(previous["path"]) if previous is not None else set())
    todo = [c for c in candidates if c.path not in done]
    log.info("found %d images (%d already described), %d skipped paths", len(candidates), len(candidates) - len(todo), len(skipped))
    batch: list[dict[str, Any]] = []
    for row in _map(describe, todo, workers):
        batch.append(row)
        if len(batch) >= batch_rows:
            parts.write(batch)
            batch = []
    parts.write(batch)
    frames = [f for f in (previous, parts.read_all()) if f is not None and len(f)]
    manifest = conform_columns(pd.concat(frames, ignore_index=True)) if frames else conform_columns(pd.DataFrame(columns=["path"]))
    manifest = manifest.drop_duplicates(subset=["path"], keep="last").sort_values(["dataset", "subject", "session", "path"])
    write_manifest(manifest, out, relative_to=relative_to)
    skipped_path = out.with_name(strip_suffixes(out.name) + ".skipped.csv")
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(skipped_path, index=False)
    parts.remove()
    return read_manifest(out, data_root=relative_to)


def _map(function: Any, items: list[Any], workers: int) -> Iterator[Any]:
    """``map`` in ``workers`` processes (in order), or in this process for small jobs."""
    if workers > 1 and len(items) > 4 * workers:
        with Pool(workers) as pool:
            yield from pool.imap(function, items, chunksize=max(1, min(64, len(items) // (8 * workers))))
    else:
        yield from map(function, items)


def strip_suffixes(name: str) -> str:
    for suffix in (".parquet", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
