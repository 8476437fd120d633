"""The tissue table: label values and MR relaxation parameters of every synthetic tissue.

One table serves the whole engine: a tissue's index is its label value in
``batch["labels"]``, user label maps name tissues by these names, and the physics
renderer reads the PD / T1 / T2 / T2* centres from here.

Relaxation centres (seconds; PD relative to CSF = 1) follow BrainWeb for 1.5 T and
commonly cited in-vivo values for 3 T (GM T1 1.33 s, WM T1 0.83 s, CSF T1 3-4.5 s).
CSF T1 is set to in-vivo values (3.5 s / 4.0 s) rather than BrainWeb's 2.57 s so that
a FLAIR inversion time tuned to null CSF lands in the clinical TI ranges
(about 2.0-2.2 s at 1.5 T, 2.3-2.5 s at 3 T). Lesion values follow the usual
qualitative picture: white-matter hyperintensities and oedema have longer T1 and T2
than WM (bright on T2w/FLAIR, dark on T1w); tumour cores longer still; necrosis is
close to CSF. Per subject every value is jittered log-normally (see
``prism.synth.physics.sample_tissue_parameters``), so the centres are not a claim of
precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tissue:
    """One tissue class. Times in seconds; ``centres[field_T] = (PD, T1, T2, T2*)``."""

    name: str
    label: int
    centres: dict[float, tuple[float, float, float, float]]
    description: str


TISSUES: tuple[Tissue, ...] = (
    Tissue("background", 0, {1.5: (0.0, 1.0, 0.05, 0.05), 3.0: (0.0, 1.0, 0.05, 0.05)}, "air / outside the head"),
    Tissue("csf", 1, {1.5: (1.00, 3.50, 1.00, 0.20), 3.0: (1.00, 4.00, 1.20, 0.15)}, "cerebrospinal fluid"),
    Tissue("gm", 2, {1.5: (0.82, 1.05, 0.095, 0.066), 3.0: (0.82, 1.33, 0.105, 0.050)}, "grey matter"),
    Tissue("wm", 3, {1.5: (0.70, 0.65, 0.075, 0.058), 3.0: (0.70, 0.83, 0.080, 0.045)}, "white matter"),
    Tissue(
        "lesion_wmh", 4, {1.5: (0.80, 1.15, 0.180, 0.090), 3.0: (0.80, 1.40, 0.170, 0.070)},
        "white-matter hyperintensity",
    ),
    Tissue("tumour", 5, {1.5: (0.88, 1.40, 0.140, 0.080), 3.0: (0.88, 1.75, 0.130, 0.060)}, "solid tumour-like mass"),
    Tissue("necrosis", 6, {1.5: (0.95, 2.60, 0.600, 0.150), 3.0: (0.95, 3.10, 0.600, 0.120)}, "necrotic tumour core"),
    Tissue("edema", 7, {1.5: (0.85, 1.10, 0.150, 0.080), 3.0: (0.85, 1.35, 0.140, 0.065)}, "perilesional oedema"),
    Tissue("fat", 8, {1.5: (1.00, 0.35, 0.070, 0.058), 3.0: (1.00, 0.38, 0.070, 0.045)}, "fat (scalp, orbit)"),
    Tissue("muscle", 9, {1.5: (0.70, 0.87, 0.047, 0.030), 3.0: (0.70, 1.40, 0.050, 0.028)}, "muscle"),
    Tissue("bone", 10, {1.5: (0.05, 1.00, 0.002, 0.001), 3.0: (0.05, 1.20, 0.002, 0.001)}, "cortical bone (dark)"),
)
"""All tissues, indexed by label value."""

TISSUE_LABELS: dict[str, int] = {t.name: t.label for t in TISSUES}
"""Label table of ``batch["labels"]``: 0 background, 1 CSF, 2 GM, 3 WM, 4 WMH, 5 tumour,
6 necrosis, 7 oedema, 8 fat, 9 muscle, 10 bone."""

BRAIN_TISSUES: tuple[str, ...] = ("background", "csf", "gm", "wm")
LESION_TISSUES: tuple[str, ...] = ("lesion_wmh", "tumour", "necrosis", "edema")
FIELD_STRENGTHS: tuple[float, ...] = (1.5, 3.0)

TISSUE_ALIASES: dict[str, str] = {
    "bg": "background", "air": "background", "grey_matter": "gm", "gray_matter": "gm", "cortex": "gm",
    "white_matter": "wm", "wmh": "lesion_wmh", "lesion": "lesion_wmh", "tumor": "tumour", "oedema": "edema",
}


def tissue_label(name: str) -> int:
    """Label value of a tissue name or alias (case-insensitive).

    Raises:
        ValueError: naming the unknown tissue and listing the known ones.
    """
    key = str(name).strip().lower()
    key = TISSUE_ALIASES.get(key, key)
    if key not in TISSUE_LABELS:
        raise ValueError(
            f"Unknown tissue name {name!r}. Use one of {sorted(TISSUE_LABELS)} "
            f"(aliases: {sorted(TISSUE_ALIASES)})."
        )
    return TISSUE_LABELS[key]


def tissue_centres(field_strength: float) -> torch.Tensor:
    """Relaxation centres of every tissue at the nearest tabulated field strength.

    Returns:
        float32 ``[T, 4]`` with columns (PD, T1 s, T2 s, T2* s), rows indexed by label.
    """
    nearest = min(FIELD_STRENGTHS, key=lambda f: abs(f - float(field_strength)))
    return torch.tensor([t.centres[nearest] for t in TISSUES], dtype=torch.float32)


NUM_TISSUES = len(TISSUES)
