"""Sequence recipes: which signal equation renders a sequence and its realistic parameter ranges.

A recipe is a fine-grained sequence name ("T1w_MPRAGE", "FLAIR", ...) bound to a
signal-equation family (``prism.synth.physics``), the coarse sequence type of
``prism.sequences.SEQUENCE_TYPES`` it reports, its BIDS suffix, and uniform ranges for
RepetitionTime / EchoTime / InversionTime (seconds) and FlipAngle (degrees) at 1.5 T
and 3 T. Ranges follow the usual clinical protocols (Radiopaedia, mriquestions.com):
spin-echo T1w short TR/TE, T2w long TR/TE, PDw long TR short TE; FLAIR TR > 6 s with
its inversion time tuned to null the subject's CSF; STIR short TI; MPRAGE-like
TI about 0.9-1.1 s with a small flip; spoiled GRE T1w short TR, 15-30 deg; T2*w long
TE, small flip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prism.sequences import ACQUISITION_PARAMETERS, sequence_id

FAMILIES: tuple[str, ...] = ("spin_echo", "inversion_recovery", "mprage", "spoiled_gre")
"""Signal-equation families, in the order of ``Recipe.family_id``."""

NULL_CSF = "null_csf"
"""Marker for an inversion time tuned per subject to null CSF (FLAIR)."""

Range = tuple[float, float]


@dataclass(frozen=True)
class Recipe:
    """One synthetic sequence: family, reported type, BIDS naming and parameter ranges.

    ``ranges[field_T][parameter] = (min, max)`` in s / deg; ``InversionTime`` may be
    ``NULL_CSF``. Parameters absent from ``ranges`` are not part of the sequence and get
    ``acq_present = False``.
    """

    name: str
    family: str
    sequence_type: str
    bids_suffix: str
    ranges: dict[float, dict[str, Range | str]] = field(default_factory=dict)

    @property
    def family_id(self) -> int:
        return FAMILIES.index(self.family)

    @property
    def sequence_id(self) -> int:
        return sequence_id(self.sequence_type)


def _both(**ranges: Range | str) -> dict[float, dict[str, Range | str]]:
    return {1.5: dict(ranges), 3.0: dict(ranges)}


def _per_field(low: dict[str, Range | str], high: dict[str, Range | str]) -> dict[float, dict[str, Range | str]]:
    return {1.5: low, 3.0: high}


_SE90 = (90.0, 90.0)
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("T1w_SE", "spin_echo", "T1w", "T1w",
               _both(RepetitionTime=(0.40, 0.70), EchoTime=(0.010, 0.020), FlipAngle=_SE90)),
        Recipe("T2w", "spin_echo", "T2w", "T2w",
               _both(RepetitionTime=(2.5, 6.0), EchoTime=(0.080, 0.120), FlipAngle=_SE90)),
        Recipe("PDw", "spin_echo", "PDw", "PDw",
               _both(RepetitionTime=(2.5, 6.0), EchoTime=(0.010, 0.030), FlipAngle=_SE90)),
        Recipe("FLAIR", "inversion_recovery", "FLAIR", "FLAIR",
               _both(RepetitionTime=(6.0, 11.0), EchoTime=(0.080, 0.140), InversionTime=NULL_CSF, FlipAngle=_SE90)),
        Recipe("STIR", "inversion_recovery", "other", "STIR",
               _per_field(
                   dict(RepetitionTime=(3.0, 6.0), EchoTime=(0.030, 0.080), InversionTime=(0.13, 0.18), FlipAngle=_SE90),
                   dict(RepetitionTime=(3.0, 6.0), EchoTime=(0.030, 0.080), InversionTime=(0.18, 0.25), FlipAngle=_SE90),
               )),
        Recipe("T1w_MPRAGE", "mprage", "T1w", "T1w",
               _per_field(
                   dict(RepetitionTime=(1.8, 2.2), EchoTime=(0.0025, 0.0045), InversionTime=(0.85, 1.0), FlipAngle=(7.0, 12.0)),
                   dict(RepetitionTime=(2.0, 2.5), EchoTime=(0.0020, 0.0035), InversionTime=(0.90, 1.1), FlipAngle=(7.0, 10.0)),
               )),
        Recipe("T1w_GRE", "spoiled_gre", "T1w", "T1w",
               _both(RepetitionTime=(0.005, 0.025), EchoTime=(0.002, 0.006), FlipAngle=(15.0, 30.0))),
        Recipe("T2starw", "spoiled_gre", "T2starw", "T2starw",
               _both(RepetitionTime=(0.40, 0.80), EchoTime=(0.015, 0.040), FlipAngle=(5.0, 20.0))),
    )
}
"""All recipes by name."""

PARAMETER_INDEX = {name: i for i, name in enumerate(ACQUISITION_PARAMETERS)}
FIELD_INDEX = PARAMETER_INDEX["MagneticFieldStrength"]
TI_INDEX = PARAMETER_INDEX["InversionTime"]


def get_recipe(name: str) -> Recipe:
    """Return the recipe called ``name``.

    Raises:
        ValueError: naming the unknown recipe and listing the known ones.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown synthetic sequence recipe {name!r}. Use one of {list(RECIPES)}.")
    return RECIPES[name]


def with_overrides(recipe: Recipe, overrides: dict[str, Range] | None) -> Recipe:
    """A copy of ``recipe`` whose parameter ranges (both field strengths) are replaced by ``overrides``.

    Raises:
        ValueError: for a parameter the recipe does not have, or min > max.
    """
    if not overrides:
        return recipe
    ranges = {f: dict(r) for f, r in recipe.ranges.items()}
    for parameter, value in overrides.items():
        if parameter not in recipe.ranges[1.5]:
            raise ValueError(
                f"Recipe {recipe.name!r} has no parameter {parameter!r} to override; "
                f"it has {list(recipe.ranges[1.5])}."
            )
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"Range for {recipe.name}.{parameter} has min {low} > max {high}; swap them.")
        for f in ranges:
            ranges[f][parameter] = (low, high)
    return Recipe(recipe.name, recipe.family, recipe.sequence_type, recipe.bids_suffix, ranges)


def sample_acquisition(
    recipes: list[Recipe], field_strength: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw acquisition parameters for N renders.

    Args:
        recipes: N recipes (one per render).
        field_strength: float ``[N]`` tesla (1.5 or 3.0).
        generator: CPU generator (the only source of randomness).

    Returns:
        ``(params [N, P] float32, present [N, P] bool)`` in ``ACQUISITION_PARAMETERS``
        order. A CSF-nulled InversionTime is left at 0 with ``present`` True; the
        renderer fills it in from the subject's CSF T1.
    """
    n, p = len(recipes), len(ACQUISITION_PARAMETERS)
    low, high = torch.zeros(n, p), torch.zeros(n, p)
    present = torch.zeros(n, p, dtype=torch.bool)
    for i, recipe in enumerate(recipes):
        field_key = min(recipe.ranges, key=lambda f: abs(f - float(field_strength[i])))
        for parameter, value in recipe.ranges[field_key].items():
            j = PARAMETER_INDEX[parameter]
            present[i, j] = True
            if value != NULL_CSF:
                low[i, j], high[i, j] = value
    params = low + (high - low) * torch.rand(n, p, generator=generator)
    params[:, FIELD_INDEX] = field_strength.float()
    present[:, FIELD_INDEX] = True
    return params, present
