"""BIDS file names, sidecar inheritance and sidecar value normalisation.

Hand-written on purpose instead of pybids / ancpbids: building a manifest only needs the
entities in file names and the JSON sidecars that apply to each image, and a plain
``os.scandir`` walk with one regular expression and a per-folder sidecar cache touches
every folder once. pybids builds an SQL index of every file and every metadata key
(minutes for tens of thousands of files) and requires valid BIDS, which dcm2niix output
and challenge layouts are not.

Inheritance follows the BIDS inheritance principle: a sidecar applies to an image when
it lies in the image's folder or an ancestor up to the dataset root, has the same suffix,
and its entities are a subset of the image's. Applicable sidecars are merged from the
top (dataset root) down; deeper and more specific files override. dcm2niix output outside
BIDS (``scan.nii.gz`` + ``scan.json``) uses the same-stem JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from prism.data.manifest import strip_nifti_suffix

_ENTITY = r"[a-zA-Z0-9]+-[a-zA-Z0-9]+"
BIDS_NAME = re.compile(rf"^(?P<entities>(?:{_ENTITY}_)*)(?P<suffix>[a-zA-Z0-9]+)$")


@dataclass(frozen=True)
class BidsName:
    """The parsed stem of a BIDS file name: ``sub-01_ses-2_acq-fast_T1w`` -> entities + suffix."""

    entities: dict[str, str] = field(hash=False)
    suffix: str


def parse_bids_name(filename: str) -> BidsName | None:
    """Parse ``sub-01_ses-1_run-2_T1w.nii.gz`` (or ``.json``); ``None`` when not BIDS-shaped."""
    stem = strip_nifti_suffix(os.path.basename(filename))
    if stem.endswith(".json"):
        stem = stem[: -len(".json")]
    match = BIDS_NAME.match(stem)
    if match is None:
        return None
    entities = dict(part.split("-", 1) for part in match["entities"].split("_") if part)
    return BidsName(entities=entities, suffix=match["suffix"])


class SidecarResolver:
    """Finds and merges the JSON sidecars that apply to an image, caching folder listings.

    Args:
        dataset_root: the BIDS dataset root (the folder holding ``sub-*``), or for plain
            folders the scanned root (only same-stem sidecars are used there).
    """

    def __init__(self, dataset_root: str):
        self.dataset_root = os.path.abspath(dataset_root)
        self._listing: dict[str, list[tuple[BidsName, str]]] = {}
        self._json_cache: dict[str, tuple[dict[str, Any] | None, str | None]] = {}

    def _jsons(self, folder: str) -> list[tuple[BidsName, str]]:
        if folder not in self._listing:
            found = []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.endswith(".json") and entry.is_file():
                            parsed = parse_bids_name(entry.name)
                            if parsed is not None:
                                found.append((parsed, entry.path))
            except OSError:
                pass
            self._listing[folder] = found
        return self._listing[folder]

    def applicable(self, image_path: str, bids: BidsName | None) -> list[str]:
        """Sidecar paths applying to ``image_path``, in merge order (general first)."""
        folder = os.path.dirname(os.path.abspath(image_path))
        same_stem = strip_nifti_suffix(os.path.abspath(image_path)) + ".json"
        if bids is None:
            return [same_stem] if os.path.isfile(same_stem) else []
        chain: list[str] = []
        folders = [folder]
        while folder != self.dataset_root and folder.startswith(self.dataset_root + os.sep):
            folder = os.path.dirname(folder)
            folders.append(folder)
        for level in reversed(folders):
            matches = [
                (len(name.entities), path)
                for name, path in self._jsons(level)
                if name.suffix == bids.suffix and _is_subset(name.entities, bids.entities)
            ]
            chain.extend(path for _, path in sorted(matches))
        if not chain and os.path.isfile(same_stem):
            chain.append(same_stem)
        return chain

    def load(self, paths: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Merge the given sidecars (later override earlier); return metadata and notes on bad files."""
        merged: dict[str, Any] = {}
        notes: list[str] = []
        for path in paths:
            if path not in self._json_cache:
                self._json_cache[path] = _read_json(path)
            content, error = self._json_cache[path]
            if error:
                notes.append(error)
            elif content:
                merged.update(content)
        return merged, notes


def _is_subset(small: dict[str, str], large: dict[str, str]) -> bool:
    return all(large.get(key) == value for key, value in small.items())


def _read_json(path: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"sidecar {os.path.basename(path)} unreadable ({type(err).__name__}: {err}): ignored"
    if not isinstance(content, dict):
        return None, f"sidecar {os.path.basename(path)} is not a JSON object: ignored"
    return content, None


# ----------------------------------------------------------------------------- values and units

# Values above the threshold cannot be in the BIDS unit and are taken to be in the unit named
# (divide by 1000): a TR over 100 s, a TE over 1 s, a TI over 10 s, a field over 20 T do not exist.
_MILLI_THRESHOLDS = {
    "RepetitionTime": (100.0, "ms"),
    "EchoTime": (1.0, "ms"),
    "InversionTime": (10.0, "ms"),
    "MagneticFieldStrength": (20.0, "mT"),
}
_PLAUSIBLE = {
    "RepetitionTime": (1e-4, 100.0, "s"),
    "EchoTime": (1e-5, 1.0, "s"),
    "InversionTime": (1e-3, 10.0, "s"),
    "FlipAngle": (0.01, 360.0, "deg"),
    "MagneticFieldStrength": (0.01, 20.0, "T"),
}


def normalize_parameter(name: str, raw: Any) -> tuple[float, str | None]:
    """Convert one acquisition parameter to its BIDS unit (s, deg, T).

    Returns ``(value, note)``: ``value`` is NaN when unknown or unusable and ``note``
    explains any conversion or rejection (``None`` when the value was fine or absent).
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or (isinstance(raw, str) and raw.strip() == ""):
        return math.nan, None
    note = None
    if isinstance(raw, (list, tuple)):
        numbers = [v for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            return math.nan, f"{name}={raw!r} is not a number: ignored"
        note = f"{name} lists {len(raw)} values (multi-echo / multi-part?): the first, {numbers[0]}, is used"
        raw = numbers[0]
    if isinstance(raw, bool):
        return math.nan, f"{name}={raw!r} is a boolean, not a number: ignored"
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return math.nan, f"{name}={raw!r} is not a number: ignored"
    if not isinstance(raw, (int, float)):
        return math.nan, f"{name} has type {type(raw).__name__}, expected a number: ignored"
    value = float(raw)
    low, high, unit = _PLAUSIBLE[name]
    if not math.isfinite(value) or value <= 0:
        return math.nan, f"{name}={raw!r} is not a positive finite number: ignored"
    if name in _MILLI_THRESHOLDS:
        threshold, milli_unit = _MILLI_THRESHOLDS[name]
        if value > threshold:
            converted = value / 1000.0
            if low <= converted <= high:
                return converted, _join(note, f"{name}={raw:g} looks like {milli_unit}: converted to {converted:g} {unit}")
    if not low <= value <= high:
        return math.nan, _join(note, f"{name}={raw:g} is outside the plausible range [{low:g}, {high:g}] {unit}: ignored")
    return value, note


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def text_field(metadata: dict[str, Any], *keys: str) -> str:
    """The first of ``keys`` present in ``metadata`` as a stripped string ('' when none)."""
    for key in keys:
        value = metadata.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            text = str(value).strip()
            if text:
                return text
    return ""
