"""Synthetic lesions drawn into batched tissue maps: white-matter hyperintensities and tumours.

Lesions are drawn in output (crop) space after the deformation, as soft probability
maps, so they partial-volume like real tissue and become their own label classes
(``lesion_wmh`` 4, ``tumour`` 5, ``necrosis`` 6, ``edema`` 7):

* WMH: a smooth Gaussian random field, pushed up near the ventricles
  (periventricular weight x blurred CSF), thresholded softly and confined to WM.
* Tumour: an ellipsoid with a noisy boundary anywhere in the brain, an optional
  necrotic core (a fraction of its radius) and a shell of oedema confined to WM.

Per-sample presence and parameters broadcast over the batch: no loop over samples.
Lesion fields are computed on a grid ``LESION_STRIDE`` times coarser (they are smooth
sigmoids of smooth fields) and upsampled once; only lesion classes that occur in the
batch become channels, so lesion-free batches cost nothing downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.synth.config import LesionConfig
from prism.synth.tissues import TISSUE_LABELS

LESION_STRIDE = 2
LESION_CHANNELS: tuple[int, ...] = tuple(TISSUE_LABELS[t] for t in ("lesion_wmh", "tumour", "necrosis", "edema"))


def _uniform(r: tuple[float, float], *shape: int, generator: torch.Generator) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * torch.rand(*shape, generator=generator)


def smooth_noise(
    batch: int, control_points: int, size: tuple[int, int, int], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Smooth random field ``[B, 1, d, h, w]``: a Gaussian lattice upsampled trilinearly."""
    coarse = torch.randn(batch, 1, control_points, control_points, control_points, generator=generator)
    return F.interpolate(coarse.to(device), size=size, mode="trilinear", align_corners=True)


def add_lesions(
    maps: torch.Tensor, tissue_ids: tuple[int, ...], spacing_mm: float, config: LesionConfig, generator: torch.Generator
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Append lesion channels to tissue maps, taking their probability from the tissues beneath.

    Args:
        maps: ``[B, C, d, h, w]`` tissue probabilities (sum 1 over C).
        tissue_ids: label value of each channel (must include background; csf / wm if lesions
            are to follow them).
        spacing_mm: voxel size of ``maps``.
        config: lesion probabilities and ranges.
        generator: CPU generator. The same number of draws is made whatever is drawn,
            so the rest of the batch does not depend on which lesions occurred.

    Returns:
        ``(maps [B, C + L, d, h, w], tissue_ids + the L lesion labels present)``; channels
        still sum to 1. L = 0 when no sample of the batch has a lesion.
    """
    b, _, *size = maps.shape
    draws = _draw(b, config, generator)
    if not bool(draws["has_wmh"].any() or draws["has_tumour"].any()):
        return maps, tuple(tissue_ids)
    stride = LESION_STRIDE if min(size) >= 8 * LESION_STRIDE else 1
    small = F.avg_pool3d(maps, stride, ceil_mode=True) if stride > 1 else maps
    lesions = _lesion_fields(small, tissue_ids, spacing_mm * stride, draws, generator)
    keep = [i for i in range(lesions.shape[1]) if bool(lesions[:, i].amax() > 0.05)]
    if not keep:
        return maps, tuple(tissue_ids)
    lesions = lesions[:, keep].clamp_min(0)
    c = maps.shape[1]
    out = maps.new_empty(b, c + len(keep), *size)  # one allocation: tissues scaled, then lesions
    if stride > 1:
        out[:, c:] = F.interpolate(lesions, size=tuple(size), mode="trilinear", align_corners=False)
        out[:, c:] *= (1 - maps[:, :1])  # never outside the anatomy
    else:
        out[:, c:] = lesions
    remaining = (1 - out[:, c:].sum(1, keepdim=True)).clamp_min_(0)
    torch.mul(maps, remaining, out=out[:, :c])
    return out, tuple(tissue_ids) + tuple(LESION_CHANNELS[i] for i in keep)


def _draw(b: int, config: LesionConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every per-sample random parameter of the lesions (a fixed number of draws)."""
    return {
        "has_wmh": torch.rand(b, generator=generator) < config.wmh_probability,
        "threshold": _uniform(config.wmh_threshold, b, generator=generator),
        "pv_weight": _uniform(config.wmh_periventricular_weight, b, generator=generator),
        "wmh_lattice": torch.randn(b, 1, 12, 12, 12, generator=generator),
        "has_tumour": torch.rand(b, generator=generator) < config.tumour_probability,
        "radius_mm": _uniform(config.tumour_radius_mm, b, 3, generator=generator)
        * _uniform((0.75, 1.25), b, 3, generator=generator),
        "necrosis_fraction": _uniform(config.necrosis_fraction, b, generator=generator),
        "margin_mm": _uniform(config.edema_margin_mm, b, generator=generator),
        "wobble_lattice": torch.randn(b, 1, 6, 6, 6, generator=generator),
        "centre_jitter": torch.rand(b, 3, generator=generator),
        "centre_seed": torch.randint(0, 2**62, (1,), generator=generator),
    }


def _lesion_fields(
    maps: torch.Tensor, tissue_ids: tuple[int, ...], spacing_mm: float, draws: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """WMH, tumour, necrosis and oedema probabilities ``[B, 4, d, h, w]`` on the grid of ``maps``."""
    b, _, *size = maps.shape
    device = maps.device
    index = {t: i for i, t in enumerate(tissue_ids)}
    bg = maps[:, 0]
    zero = torch.zeros_like(bg)
    wm = maps[:, index[TISSUE_LABELS["wm"]]] if TISSUE_LABELS["wm"] in index else zero
    csf = maps[:, index[TISSUE_LABELS["csf"]]] if TISSUE_LABELS["csf"] in index else zero
    brain = (1 - bg).clamp(0, 1)
    view = lambda x: x.float().to(device).view(-1, 1, 1, 1)  # noqa: E731

    # White-matter hyperintensities: smooth field + periventricular drive, soft threshold, in WM.
    wmh = zero
    if bool(draws["has_wmh"].any()):
        near_csf = F.avg_pool3d(csf[:, None], kernel_size=3, stride=1, padding=1, count_include_pad=False)
        field = F.interpolate(draws["wmh_lattice"].to(device), size=tuple(size), mode="trilinear", align_corners=True)
        field = field / field.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
        drive = (field + view(draws["pv_weight"])[:, None] * near_csf)[:, 0]
        wmh = torch.sigmoid((drive - view(draws["threshold"])) / 0.15) * wm * view(draws["has_wmh"])

    # Tumour: noisy ellipsoid in the brain, necrotic core, oedema shell in WM.
    tumour = necrosis = edema = zero
    if bool(draws["has_tumour"].any()):
        centre_gen = torch.Generator().manual_seed(int(draws["centre_seed"]))
        centre = _tumour_centres(brain - csf, spacing_mm, draws["centre_jitter"], centre_gen)
        radius = draws["radius_mm"].to(device)
        axes = [(torch.arange(n, device=device) - (n - 1) / 2) * spacing_mm for n in size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        offset = (grid[None] - centre.to(device).view(-1, 1, 1, 1, 3)) / radius.view(-1, 1, 1, 1, 3)
        wobble = F.interpolate(draws["wobble_lattice"].to(device), size=tuple(size), mode="trilinear", align_corners=True)
        distance = offset.norm(dim=-1) * (1 + 0.15 * wobble[:, 0])  # about 1 on the noisy surface
        mean_radius = radius.mean(1).view(-1, 1, 1, 1)
        soft = spacing_mm / mean_radius  # about one voxel of partial volume at the boundary
        fraction = view(draws["necrosis_fraction"])
        mass = torch.sigmoid((1 - distance) / soft) * brain * view(draws["has_tumour"])
        necrosis = torch.sigmoid((fraction - distance) / soft) * mass * (fraction > 0.05).float()
        tumour = mass - necrosis
        margin = view(draws["margin_mm"]) / mean_radius
        edema = torch.sigmoid((1 + margin - distance) / (2 * soft)) * wm * (1 - mass) * view(draws["has_tumour"])
        wmh = wmh * (1 - mass - edema).clamp_min(0)
    return torch.stack([wmh, tumour, necrosis, edema], dim=1)


def _tumour_centres(
    tissue: torch.Tensor, spacing_mm: float, jitter: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A random point inside the (non-CSF) brain per sample, ``[B, 3]`` mm from the crop centre.

    Drawn on a 4x coarser grid (a cell chosen with probability ~ its brain content), then
    at ``jitter`` (uniform [0, 1)^3) inside the cell.
    """
    cells = F.avg_pool3d(tissue[:, None].clamp_min(0), kernel_size=4, stride=4, ceil_mode=True)[:, 0]
    b, *coarse = cells.shape
    pick = torch.multinomial(cells.flatten(1).cpu() + 1e-6, 1, generator=generator)[:, 0]
    _, ch, cw = coarse
    index = torch.stack([pick // (ch * cw), (pick // cw) % ch, pick % cw], dim=-1).float()  # [B, 3]
    voxel = (index + jitter) * 4 - 0.5
    size = torch.tensor(tissue.shape[1:], dtype=torch.float32)
    return (voxel.clamp(torch.zeros(3), size - 1) - (size - 1) / 2) * spacing_mm
