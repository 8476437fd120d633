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
    field = smooth_noise(b, max(4, int(size[0] * spacing_mm / 16)), tuple(size), generator, device)[:, 0]
    field = field / field.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    near_csf = F.avg_pool3d(csf[:, None], kernel_size=5, stride=1, padding=2, count_include_pad=False)[:, 0]
    wmh = torch.sigmoid((field + pv_weight * near_csf - threshold) / 0.15) * wm * has_wmh

    # Tumour with necrotic core and oedema.
    has_tumour = view((torch.rand(b, generator=generator) < config.tumour_probability).float())
    radius_mm = _uniform(config.tumour_radius_mm, b, 3, generator=generator) * _uniform((0.75, 1.25), b, 3, generator=generator)
    extent = torch.tensor([(n - 1) / 2 * spacing_mm for n in size])
    centre = (torch.rand(b, 3, generator=generator) - 0.5) * extent * 0.9  # mm from crop centre
    axes = [(torch.arange(n, device=device) - (n - 1) / 2) * spacing_mm for n in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [d, h, w, 3]
    offset = (grid[None] - centre.to(device).view(-1, 1, 1, 1, 3)) / radius_mm.to(device).view(-1, 1, 1, 1, 3)
    distance = offset.norm(dim=-1)  # 1 on the ellipsoid surface
    wobble = smooth_noise(b, 6, tuple(size), generator, device)[:, 0]
    distance = distance * (1 + 0.15 * wobble)
    necrosis_fraction = view(_uniform(config.necrosis_fraction, b, generator=generator))
    margin = view(_uniform(config.edema_margin_mm, b, generator=generator)) / radius_mm.mean(1).to(device).view(-1, 1, 1, 1)
    soft = 2.0 / radius_mm.mean(1).to(device).view(-1, 1, 1, 1) * spacing_mm  # about one voxel of blur
    mass = torch.sigmoid((1 - distance) / soft) * brain * has_tumour
    necrosis = torch.sigmoid((necrosis_fraction - distance) / soft) * mass * (necrosis_fraction > 0.05).float()
    tumour = mass - necrosis
    edema = torch.sigmoid((1 + margin - distance) / (2 * soft)) * wm * (1 - mass) * has_tumour

    wmh = wmh * (1 - mass - edema).clamp_min(0)
    lesions = torch.stack([wmh, tumour, necrosis, edema], dim=1).clamp_min(0)
    remaining = (1 - lesions.sum(1, keepdim=True)).clamp_min(0)
    out = torch.cat([maps * remaining, lesions], dim=1)
    return out, tuple(tissue_ids) + LESION_CHANNELS
