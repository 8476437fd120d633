"""The controlled vocabulary of MRI sequence types and acquisition parameters.

Every part of prism (synthesis, real-data manifests, objectives, fine-tuning heads,
exported checkpoints) speaks this one vocabulary, so a sequence id means the same
thing everywhere. Parameter names and units follow the BIDS sidecar convention:
times in seconds, angles in degrees, field strength in tesla.
"""

from __future__ import annotations

SEQUENCE_TYPES: tuple[str, ...] = (
    "T1w",
    "T2w",
    "FLAIR",
    "PDw",
    "T2starw",
    "DWI",
    "SWI",
    "MRA",
    "other",
)
"""Sequence types, in id order. ``sequence_id`` in a batch indexes this tuple; -1 = unknown."""

SEQUENCE_ALIASES: dict[str, str] = {
    "t1": "T1w",
    "t1w": "T1w",
    "mprage": "T1w",
    "t1gre": "T1w",
    "spgr": "T1w",
    "t2": "T2w",
    "t2w": "T2w",
    "flair": "FLAIR",
    "t2flair": "FLAIR",
    "pd": "PDw",
    "pdw": "PDw",
    "t2star": "T2starw",
    "t2starw": "T2starw",
    "t2*": "T2starw",
    "gre": "T2starw",
    "dwi": "DWI",
    "adc": "DWI",
    "swi": "SWI",
    "mra": "MRA",
    "tof": "MRA",
    "angio": "MRA",
    "stir": "other",
    "other": "other",
}

ACQUISITION_PARAMETERS: tuple[str, ...] = (
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "MagneticFieldStrength",
)
"""Acquisition parameters in the order of the last axis of ``acq_params`` (s, s, s, deg, T)."""

NUM_SEQUENCE_TYPES = len(SEQUENCE_TYPES)
NUM_ACQUISITION_PARAMETERS = len(ACQUISITION_PARAMETERS)


def sequence_id(name: str) -> int:
    """Return the id of a sequence type name or alias (case-insensitive).

    Raises:
        ValueError: naming the unknown sequence and the accepted names.
    """
    if name in SEQUENCE_TYPES:
        return SEQUENCE_TYPES.index(name)
    canonical = SEQUENCE_ALIASES.get(name.strip().lower())
    if canonical is None:
        raise ValueError(
            f"Unknown sequence type {name!r}. Use one of {list(SEQUENCE_TYPES)} "
            f"(or an alias: {sorted(SEQUENCE_ALIASES)})."
        )
    return SEQUENCE_TYPES.index(canonical)
