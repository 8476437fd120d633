"""Infer an image's sequence type, recording how: BIDS suffix, file name, or sidecar.

Order of evidence (the first that answers wins, and ``sequence_source`` says which):

1. ``bids_suffix``: the BIDS suffix (``T1w``, ``FLAIR``, ``dwi``, ``angio``, ...).
2. ``filename``: keywords in the file name, then in its folder names (``t1_mprage``,
   ``BraTS_001_flair``, ``T2/scan.nii.gz``).
3. ``sidecar``: keywords in SeriesDescription / ProtocolName / SequenceName, a ``.bval``
   file next to the image (diffusion), then the acquisition parameters (TR / TE / TI /
   flip angle) read against textbook contrast rules.
4. ``unknown``: sequence ``''``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from prism.data.manifest import strip_nifti_suffix

BIDS_SUFFIX_SEQUENCES: dict[str, str] = {
    "T1w": "T1w",
    "inplaneT1": "T1w",
    "UNIT1": "T1w",
    "T2w": "T2w",
    "inplaneT2": "T2w",
    "FLAIR": "FLAIR",
    "PDw": "PDw",
    "PD": "PDw",
    "T2starw": "T2starw",
    "T2star": "T2starw",
    "MEGRE": "T2starw",
    "dwi": "DWI",
    "sbref": "DWI",
    "ADC": "DWI",
    "swi": "SWI",
    "SWI": "SWI",
    "angio": "MRA",
    "PDT2": "other",
    "T1rho": "other",
    "T1map": "other",
    "T2map": "other",
    "T2starmap": "other",
    "R1map": "other",
    "R2starmap": "other",
    "MTR": "other",
    "MESE": "other",
}
"""BIDS suffixes and the sequence type they name."""

# (pattern, sequence) in priority order: specific names before the generic t1 / t2 they contain.
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"(?:3d[-_]?|t2[-_]?)?flair|dark[-_ ]?fluid", "FLAIR"),
    (r"swi|swan|susceptibility", "SWI"),
    (r"tof|mra|angio", "MRA"),
    (r"dwi|dti|adc|trace|diffusion|ep2d[-_]?diff", "DWI"),
    (r"t2[-_ ]?star(?:w)?|t2\*|t2s|medic|megre", "T2starw"),
    (r"stir|tirm", "other"),
    (r"pd(?:w|fs)?|proton[-_ ]?density", "PDw"),
    (r"mprage|mp2rage|spgr|bravo|tfl3d|(?:3d[-_]?)?t1(?:w|c|ce|gd|post|pre)?|t1[-_ ]?weighted", "T1w"),
    (r"(?:3d[-_]?)?t2(?:w|tse|fse|space)?|t2[-_ ]?weighted", "T2w"),
)
_KEYWORD_PATTERNS = tuple((re.compile(rf"(?<![a-z0-9])(?:{p})(?![a-z0-9])"), seq) for p, seq in _KEYWORDS)


@dataclass(frozen=True)
class SequenceGuess:
    """The inferred sequence (``''`` when unknown), its source and the evidence."""

    sequence: str
    source: str
    evidence: str


UNKNOWN = SequenceGuess("", "unknown", "")


def sequence_from_text(text: str) -> tuple[str, str] | None:
    """``(sequence, matched keyword)`` for the first keyword found in ``text``, else ``None``.

    Matching is case-insensitive and needs a non-alphanumeric boundary on both sides
    (``t1_mprage`` matches, ``dt10`` does not). ``t1ce``/``t1gd`` count as T1w.
    """
    lowered = text.lower()
    for pattern, sequence in _KEYWORD_PATTERNS:
        match = pattern.search(lowered)
        if match:
            return sequence, match.group(0)
    return None


def sequence_from_parameters(tr: float, te: float, ti: float, flip: float) -> tuple[str, str] | None:
    """Textbook contrast rules on seconds / degrees; ``None`` when TR and TE are unknown or ambiguous."""
    known = lambda v: v is not None and not math.isnan(v)  # noqa: E731
    if not (known(tr) and known(te)):
        return None
    described = f"TR={tr:g} s, TE={te:g} s" + (f", TI={ti:g} s" if known(ti) else "") + (f", flip={flip:g} deg" if known(flip) else "")
    if known(ti):
        if ti >= 1.2 and te >= 0.05:
            return "FLAIR", described + ": long TI and TE (fluid-attenuated inversion recovery)"
        if ti <= 0.25:
            return "other", described + ": short TI (STIR, fat suppressed)"
        if 0.3 <= ti <= 1.5 and te < 0.01:
            return "T1w", described + ": TI 0.3-1.5 s with short TE (MPRAGE-like)"
    if tr < 0.1:  # gradient echo
        if te >= 0.015:
            return "T2starw", described + ": gradient echo with long TE"
        if not known(flip) or flip >= 8:
            return "T1w", described + ": spoiled gradient echo, short TE"
        return None
    if tr <= 1.0 and te <= 0.03:
        return "T1w", described + ": short TR and TE"
    if tr >= 1.5 and te >= 0.06:
        return "T2w", described + ": long TR and TE"
    if tr >= 1.5 and te <= 0.035:
        return "PDw", described + ": long TR, short TE"
    return None


def infer_sequence(
    image_path: str,
    relative_path: str,
    bids_suffix: str | None,
    metadata: dict,
    parameters: dict[str, float],
) -> SequenceGuess:
    """Infer the sequence type of one image.

    Args:
        image_path: absolute path (used to look for a ``.bval`` next to it).
        relative_path: path below the scanned root (its folder names are evidence too).
        bids_suffix: BIDS suffix, or ``None`` outside BIDS.
        metadata: merged sidecar JSON.
        parameters: normalised acquisition parameters (seconds / degrees, NaN unknown).
    """
    if bids_suffix is not None and bids_suffix in BIDS_SUFFIX_SEQUENCES:
        return SequenceGuess(BIDS_SUFFIX_SEQUENCES[bids_suffix], "bids_suffix", f"BIDS suffix {bids_suffix!r}")
    parts = strip_nifti_suffix(relative_path.replace(os.sep, "/")).split("/")
    for depth, part in enumerate(reversed(parts)):
        found = sequence_from_text(part)
        if found:
            where = "file name" if depth == 0 else f"folder name {part!r}"
            return SequenceGuess(found[0], "filename", f"keyword {found[1]!r} in {where}")
    for key in ("SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceDetails"):
        value = metadata.get(key)
        if isinstance(value, str):
            found = sequence_from_text(value)
            if found:
                return SequenceGuess(found[0], "sidecar", f"keyword {found[1]!r} in sidecar {key} {value!r}")
    if os.path.isfile(strip_nifti_suffix(image_path) + ".bval"):
        return SequenceGuess("DWI", "sidecar", ".bval file next to the image")
    found = sequence_from_parameters(
        parameters.get("RepetitionTime", math.nan),
        parameters.get("EchoTime", math.nan),
        parameters.get("InversionTime", math.nan),
        parameters.get("FlipAngle", math.nan),
    )
    if found:
        return SequenceGuess(found[0], "sidecar", found[1])
    return UNKNOWN
