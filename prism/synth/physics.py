"""MR signal equations (magnitude, up to a global scale) and per-subject tissue parameters.

Equations (times in seconds, angles in degrees):

* spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``
* inversion recovery: ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``;
  a tissue is nulled at ``TI = T1 ln(2 / (1 + exp(-TR/T1)))`` (``T1 ln 2`` for TR >> T1)
* MPRAGE-like T1w: the inversion-recovery magnetisation read by a small-flip
  gradient echo: ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| sin(a) exp(-TE/T2*)``
* spoiled gradient echo: ``S = PD sin(a) (1 - E1) exp(-TE/T2*) / (1 - cos(a) E1)``,
  ``E1 = exp(-TR/T1)``

All functions broadcast over any leading shape, so a whole batch of tissues x renders
is evaluated in one call.
"""

from __future__ import annotations

import math

import torch

from prism.synth.recipes import FAMILIES, PARAMETER_INDEX
from prism.synth.tissues import NUM_TISSUES, tissue_centres

TR, TE, TI, FLIP = (PARAMETER_INDEX[k] for k in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle"))
PD, T1, T2, T2STAR = 0, 1, 2, 3


def spin_echo(pd: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, tr: torch.Tensor, te: torch.Tensor) -> torch.Tensor:
    """Spin-echo magnitude ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    return pd * (1 - torch.exp(-tr / t1)) * torch.exp(-te / t2)


def inversion_recovery(
    pd: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, tr: torch.Tensor, te: torch.Tensor, ti: torch.Tensor
) -> torch.Tensor:
    """Inversion-recovery magnitude ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``."""
    return pd * (1 - 2 * torch.exp(-ti / t1) + torch.exp(-tr / t1)).abs() * torch.exp(-te / t2)


def mprage(
    pd: torch.Tensor, t1: torch.Tensor, t2star: torch.Tensor, tr: torch.Tensor, te: torch.Tensor,
    ti: torch.Tensor, flip_deg: torch.Tensor,
) -> torch.Tensor:
    """MPRAGE-like magnitude: inversion recovery read out by a small-flip gradient echo."""
    recovery = (1 - 2 * torch.exp(-ti / t1) + torch.exp(-tr / t1)).abs()
    return pd * recovery * torch.sin(torch.deg2rad(flip_deg)) * torch.exp(-te / t2star)


def spoiled_gre(
    pd: torch.Tensor, t1: torch.Tensor, t2star: torch.Tensor, tr: torch.Tensor, te: torch.Tensor, flip_deg: torch.Tensor
) -> torch.Tensor:
    """Spoiled gradient-echo (FLASH / SPGR) magnitude."""
    a = torch.deg2rad(flip_deg)
    e1 = torch.exp(-tr / t1)
    return pd * torch.sin(a) * (1 - e1) * torch.exp(-te / t2star) / (1 - torch.cos(a) * e1)


def null_inversion_time(t1: torch.Tensor, tr: torch.Tensor) -> torch.Tensor:
    """The inversion time that nulls a tissue of longitudinal relaxation ``t1`` at repetition ``tr``."""
    return t1 * torch.log(2 / (1 + torch.exp(-tr / t1)))


def tissue_signal(tissue_params: torch.Tensor, acq_params: torch.Tensor, family_id: torch.Tensor) -> torch.Tensor:
    """Signal of every tissue under every render.

    Args:
        tissue_params: ``[N, C, 4]`` (PD, T1 s, T2 s, T2* s) for the C tissue channels of each render.
        acq_params: ``[N, P]`` in ``ACQUISITION_PARAMETERS`` order (s / deg / T).
        family_id: int64 ``[N]`` index into ``prism.synth.recipes.FAMILIES``.

    Returns:
        ``[N, C]`` magnitude signal (not normalised).
    """
    pd, t1, t2, t2s = (tissue_params[..., k] for k in (PD, T1, T2, T2STAR))
    tr, te, ti, flip = (acq_params[:, k, None] for k in (TR, TE, TI, FLIP))
    t1, t2, t2s = t1.clamp_min(1e-4), t2.clamp_min(1e-4), t2s.clamp_min(1e-4)
    options = torch.stack(
        [
            spin_echo(pd, t1, t2, tr, te),
            inversion_recovery(pd, t1, t2, tr, te, ti),
            mprage(pd, t1, t2s, tr, te, ti, flip),
            spoiled_gre(pd, t1, t2s, tr, te, flip),
        ]
    )  # [F, N, C]
    assert options.shape[0] == len(FAMILIES)
    return options.gather(0, family_id.view(1, -1, 1).expand(1, *options.shape[1:]))[0]


def sample_tissue_parameters(
    field_strength: torch.Tensor, relative_std: float, generator: torch.Generator, independent_std: float = 0.0
) -> torch.Tensor:
    """Per-subject relaxation parameters of every tissue in the table.

    Each value is its field-strength centre times ``exp(s + e)``: ``s ~ N(0, relative_std)``
    is shared by all tissues of a subject (per parameter: scanner / method / age effects
    move GM and WM together), ``e ~ N(0, independent_std)`` is per tissue. The shared
    part varies absolute values widely while keeping the tissue contrast order realistic.

    Args:
        field_strength: float ``[B]`` tesla.
        relative_std: log-normal std shared across tissues (0.1 = about 10 %).
        generator: CPU generator.
        independent_std: log-normal std per tissue.

    Returns:
        float32 ``[B, T, 4]`` (PD, T1, T2, T2*), T = number of tissues (indexed by label).
    """
    centres = torch.stack([tissue_centres(float(f)) for f in field_strength])
    b, t, p = centres.shape
    shared = relative_std * torch.randn(b, 1, p, generator=generator)
    own = independent_std * torch.randn(b, t, p, generator=generator)
    out = centres * torch.exp(shared + own)
    assert t == NUM_TISSUES
    return out


LN2 = math.log(2.0)
