"""Synthetic lesions drawn into batched tissue maps: white-matter hyperintensities and tumours.

Lesions are drawn in output (crop) space after the deformation, as soft probability
maps, so they partial-volume like real tissue and become their own label classes
(``lesion_wmh`` 4, ``tumour`` 5, ``necrosis`` 6, ``edema`` 7):

* WMH: a smooth Gaussian random field, pushed up near the ventricles
  (periventricular weight x blurred CSF), thresholded softly and confined to WM.
* Tumour: an ellipsoid with a noisy boundary anywhere in the brain, an optional
  necrotic core (a fraction of its radius) and a shell of oedema confined to WM.

Per-sample presence and parameters broadcast over the batch: no loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.synth.config import LesionConfig
from prism.synth.tissues import TISSUE_LABELS

LESION_CHANNELS: tuple[int, ...] = tuple(TISSUE_LABELS[t] for t in ("lesion_wmh", "tumour", "necrosis", "edema"))


def _uniform(r: tuple[float, float], *shape: int, generator: torch.Generator) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * torch.rand(*shape, generator=generator)


def smooth_noise(
    batch: int, control_points: int, size: tuple[int, int, int], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Unit-variance-ish smooth random field ``[B, 1, d, h, w]`` (coarse Gaussian lattice, cubic-like upsampling)."""
    coarse = torch.randn(batch, 1, control_points, control_points, control_points, generator=generator)
    return F.interpolate(coarse.to(device), size=size, mode="trilinear", align_corners=True)


def add_lesions(
    maps: torch.Tensor, tissue_ids: tuple[int, ...], spacing_mm: float, config: LesionConfig, generator: torch.Generator
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Append lesion channels to tissue maps, taking their probability from the tissues beneath.

    Args:
        maps: ``[B, C, d, h, w]`` tissue probabilities (sum 1 over C).
        tissue_ids: label value of each channel (must include background, csf, wm).
        spacing_mm: voxel size of ``maps``.
        config: lesion probabilities and ranges.
        generator: CPU generator.

    Returns:
        ``(maps [B, C + 4, d, h, w], tissue_ids + lesion labels)``; channels still sum to 1.
    """
    b, _, *size = maps.shape
    device = maps.device
    index = {t: i for i, t in enumerate(tissue_ids)}
    bg = maps[:, index[TISSUE_LABELS["background"]]]
    wm = maps[:, index[TISSUE_LABELS["wm"]]] if TISSUE_LABELS["wm"] in index else torch.zeros_like(bg)
    csf = maps[:, index[TISSUE_LABELS["csf"]]] if TISSUE_LABELS["csf"] in index else torch.zeros_like(bg)
    brain = (1 - bg).clamp(0, 1)
    view = lambda x: x.to(device).view(-1, 1, 1, 1)  # noqa: E731

    # White-matter hyperintensities.
    has_wmh = view((torch.rand(b, generator=generator) < config.wmh_probability).float())
    threshold = view(_uniform(config.wmh_threshold, b, generator=generator))
    pv_weight = view(_uniform(config.wmh_periventricular_weight, b, generator=generator))
    coarse = torch.randn(b, 1, *(max(2, int(n * spacing_mm / 12)) for n in size), generator=generator).to(device)
    if bool(has_wmh.any()):
        # Periventricular drive: CSF blurred on a 4x coarser grid (cheap), added to a smooth field.
        near_csf = F.avg_pool3d(csf[:, None], kernel_size=4, stride=4, ceil_mode=True)
        drive = F.interpolate(coarse, size=near_csf.shape[2:], mode="trilinear", align_corners=True)
        drive = drive / drive.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1) + pv_weight[:, None] * near_csf
        drive = F.interpolate(drive, size=tuple(size), mode="trilinear", align_corners=False)[:, 0]
        wmh = torch.sigmoid((drive - threshold) / 0.15) * wm * has_wmh
    else:
        wmh = torch.zeros_like(bg)

    # Tumour with necrotic core and oedema (all its random numbers are drawn before any early exit).
    has_tumour = view((torch.rand(b, generator=generator) < config.tumour_probability).float())
    radius_mm = _uniform(config.tumour_radius_mm, b, 3, generator=generator) * _uniform((0.75, 1.25), b, 3, generator=generator)
    necrosis_fraction = view(_uniform(config.necrosis_fraction, b, generator=generator))
    margin_mm = _uniform(config.edema_margin_mm, b, generator=generator)
    wobble_lattice = torch.randn(b, 1, 6, 6, 6, generator=generator)
    if not bool(has_tumour.any()):
        zero = torch.zeros_like(wmh)
        return _merge(maps, torch.stack([wmh, zero, zero, zero], dim=1), tissue_ids)
    centre = _tumour_centres(brain - csf, spacing_mm, generator)  # [B, 3] mm from the crop centre
    axes = [(torch.arange(n, device=device) - (n - 1) / 2) * spacing_mm for n in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [d, h, w, 3]
    offset = (grid[None] - centre.to(device).view(-1, 1, 1, 1, 3)) / radius_mm.to(device).view(-1, 1, 1, 1, 3)
    wobble = F.interpolate(wobble_lattice.to(device), size=tuple(size), mode="trilinear", align_corners=True)[:, 0]
    distance = offset.norm(dim=-1) * (1 + 0.15 * wobble)  # about 1 on the (noisy) ellipsoid surface
    mean_radius = radius_mm.mean(1).to(device).view(-1, 1, 1, 1)
    margin = view(margin_mm) / mean_radius
    soft = spacing_mm / mean_radius  # about one voxel of partial volume at the boundary
    mass = torch.sigmoid((1 - distance) / soft) * brain * has_tumour
    necrosis = torch.sigmoid((necrosis_fraction - distance) / soft) * mass * (necrosis_fraction > 0.05).float()
    tumour = mass - necrosis
    edema = torch.sigmoid((1 + margin - distance) / (2 * soft)) * wm * (1 - mass) * has_tumour
    wmh = wmh * (1 - mass - edema).clamp_min(0)
    return _merge(maps, torch.stack([wmh, tumour, necrosis, edema], dim=1), tissue_ids)


def _tumour_centres(tissue: torch.Tensor, spacing_mm: float, generator: torch.Generator) -> torch.Tensor:
    """A random point inside the (non-CSF) brain per sample, ``[B, 3]`` mm from the crop centre.

    Drawn on a 4x coarser grid (a cell chosen with probability ~ its brain content), then
    uniformly inside the cell.
    """
    cells = F.avg_pool3d(tissue[:, None].clamp_min(0), kernel_size=4, stride=4, ceil_mode=True)[:, 0]
    b, *coarse = cells.shape
    weights = cells.flatten(1).cpu() + 1e-6
    pick = torch.multinomial(weights, 1, generator=generator)[:, 0]
    index = torch.stack(torch.unravel_index(pick, tuple(coarse)), dim=-1).float()  # [B, 3]
    voxel = (index + torch.rand(b, 3, generator=generator)) * 4 - 0.5
    size = torch.tensor(tissue.shape[1:], dtype=torch.float32)
    return (voxel.clamp(torch.zeros(3), size - 1) - (size - 1) / 2) * spacing_mm


def _merge(
    maps: torch.Tensor, lesions: torch.Tensor, tissue_ids: tuple[int, ...]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Append lesion channels ``[B, 4, ...]``, scaling the tissues beneath so channels sum to 1."""
    lesions = lesions.clamp_min(0)
    remaining = (1 - lesions.sum(1, keepdim=True)).clamp_min(0)
    return torch.cat([maps * remaining, lesions], dim=1), tuple(tissue_ids) + LESION_CHANNELS
