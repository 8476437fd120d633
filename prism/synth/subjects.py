"""Random subjects: deformed real anatomy with optional lesions and per-subject tissue physics.

:class:`SubjectSampler` draws a batch of new brains in one vectorised pass: a random
affine and a diffeomorphic warp per subject, a random crop and left-right flip, all
folded into one sampling grid, then one ``grid_sample`` of the cached template for the
whole batch (the batch is stacked along depth so the template is never copied B
times). Lesions are drawn into the warped maps; each subject also gets a field
strength and its own PD / T1 / T2 / T2* per tissue, which every view of that subject
shares (the views of one subject are physically consistent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prism.synth import deform
from prism.synth.anatomy import Anatomy, ICBM152Anatomy
from prism.synth.config import ContrastConfig, DeformationConfig, LesionConfig
from prism.synth.lesions import add_lesions
from prism.synth.physics import sample_tissue_parameters
from prism.synth.tissues import NUM_TISSUES

POINT_STRIDE = 4
"""Sampling points are computed every POINT_STRIDE voxels and upsampled trilinearly."""


@dataclass
class SubjectBatch:
    """A batch of synthetic subjects, all on one device.

    Attributes:
        tissue_maps: float32 ``[B, C, D, H, W]`` soft tissue probabilities (sum 1 over C).
        tissue_ids: label value (``prism.synth.tissues.TISSUE_LABELS``) of each channel.
        field_strength: float32 ``[B]`` tesla.
        tissue_params: float32 ``[B, T, 4]`` (PD, T1 s, T2 s, T2* s) of every tissue in the table.
        spacing_mm: voxel size.
    """

    tissue_maps: torch.Tensor
    tissue_ids: tuple[int, ...]
    field_strength: torch.Tensor
    tissue_params: torch.Tensor
    spacing_mm: float

    @property
    def labels(self) -> torch.Tensor:
        """int64 ``[B, D, H, W]``: label of the most probable tissue per voxel (first on ties)."""
        cached = getattr(self, "_labels", None)
        if cached is None or cached.shape[0] != self.tissue_maps.shape[0]:
            # A running max over the few channels: much faster than argmax(dim=1) on CPU.
            best = self.tissue_maps[:, 0]
            cached = torch.full_like(best, self.tissue_ids[0], dtype=torch.long)
            for channel in range(1, self.tissue_maps.shape[1]):
                current = self.tissue_maps[:, channel]
                wins = current > best
                best = torch.where(wins, current, best)
                cached = torch.where(wins, self.tissue_ids[channel], cached)
            self._labels = cached
        return cached

    @property
    def foreground(self) -> torch.Tensor:
        """bool ``[B, D, H, W]``: voxels where background is not the most probable tissue."""
        return self.labels > 0

    def channel_params(self) -> torch.Tensor:
        """``[B, C, 4]`` tissue parameters of the C channels of ``tissue_maps``."""
        index = torch.tensor(self.tissue_ids, device=self.tissue_params.device)
        return self.tissue_params[:, index]

    @classmethod
    def from_labels(
        cls,
        labels: torch.Tensor,
        generator: torch.Generator,
        spacing_mm: float = 1.0,
        field_strengths: tuple[float, ...] = (1.5, 3.0),
        tissue_relative_std: float = 0.1,
        tissue_independent_std: float = 0.04,
    ) -> "SubjectBatch":
        """Wrap given label maps (label values of ``TISSUE_LABELS``) as hard tissue maps.

        Args:
            labels: int ``[B, D, H, W]``.
        """
        if labels.ndim != 4 or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor [B, D, H, W], got {labels.dtype} {tuple(labels.shape)}.")
        if int(labels.min()) < 0 or int(labels.max()) >= NUM_TISSUES:
            raise ValueError(f"labels hold values outside the tissue table 0..{NUM_TISSUES - 1}.")
        present = torch.bincount(labels.flatten().long(), minlength=NUM_TISSUES) > 0  # O(n), no sort
        ids = tuple(sorted(set(present.nonzero()[:, 0].tolist()) | {0}))
        values = torch.tensor(ids, device=labels.device).view(1, -1, 1, 1, 1)
        maps = (labels[:, None] == values).float()  # one-hot [B, C, D, H, W]
        field = sample_field_strength(labels.shape[0], field_strengths, generator)
        params = sample_tissue_parameters(field, tissue_relative_std, generator, tissue_independent_std)
        params = params.to(labels.device)
        return cls(maps, ids, field.to(labels.device), params, spacing_mm)


def sample_field_strength(batch: int, choices: tuple[float, ...], generator: torch.Generator) -> torch.Tensor:
    """Field strength per subject ``[B]``, uniform over ``choices``."""
    pick = torch.randint(0, len(choices), (batch,), generator=generator)
    return torch.tensor([float(c) for c in choices])[pick]


class SubjectSampler:
    """Draws deformed subjects from one anatomy, deterministically per generator.

    Args:
        anatomy: source anatomy (default: nilearn's ICBM152).
        spacing_mm: working voxel size (1.0 = the template's native resolution).
        crop_size: output (D, H, W) in voxels.
        deformation: spatial randomisation ranges.
        lesions: lesion probabilities and ranges; ``None`` draws no lesions.
        contrast: field strengths and tissue-parameter jitter.
    """

    def __init__(
        self,
        anatomy: Anatomy | None = None,
        spacing_mm: float = 2.0,
        crop_size: tuple[int, int, int] = (96, 96, 96),
        deformation: DeformationConfig | None = None,
        lesions: LesionConfig | None = None,
        contrast: ContrastConfig | None = None,
    ):
        if len(crop_size) != 3 or min(int(c) for c in crop_size) < 4:
            raise ValueError(f"crop_size must be 3 ints >= 4, got {list(crop_size)}.")
        self.anatomy = anatomy or ICBM152Anatomy()
        self.spacing_mm = float(spacing_mm)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.deformation = deformation or DeformationConfig()
        self.lesions = lesions
        self.contrast = contrast or ContrastConfig()
        self._template_on: dict[str, torch.Tensor] = {}

    def template(self, device: torch.device | str) -> torch.Tensor:
        """The anatomy's maps ``[1, C, D, H, W]`` on ``device`` (cached per device)."""
        key = str(device)
        if key not in self._template_on:
            self._template_on[key] = self.anatomy.volume(self.spacing_mm).maps[None].to(device)
        return self._template_on[key]

    def sample_points(self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """Template-normalised sampling points ``[B, d, h, w, 3]`` of a batch of random subjects."""
        cfg = self.deformation
        volume = self.anatomy.volume(self.spacing_mm)
        half_extent = torch.tensor([(n - 1) / 2 * self.spacing_mm for n in volume.shape])
        linear = deform.random_affine(batch, cfg.rotation_deg, cfg.scaling, cfg.shear, generator)
        centre = deform.random_crop_centre(
            batch, self.crop_size, self.spacing_mm, volume.foreground_box_mm, cfg.translation_mm, generator
        )
        flip = torch.rand(batch, generator=generator) < cfg.flip_probability
        velocity = deform.random_velocity(
            batch, cfg.svf_control_points, cfg.svf_integration_size, cfg.svf_std_mm, half_extent, generator, device
        )
        # The map is smooth: evaluate it on a lattice 4x coarser than the crop, then upsample
        # (exact for the affine part; the warp is smooth on that scale), far cheaper than
        # sampling the displacement at every voxel.
        coarse = tuple(max(2, -(-(n - 1) // POINT_STRIDE) + 1) for n in self.crop_size)
        coarse_spacing = [self.spacing_mm * (n - 1) / (c - 1) for n, c in zip(self.crop_size, coarse)]
        points = deform.crop_points(
            coarse, coarse_spacing, linear.to(device), centre.to(device), half_extent.to(device), flip
        )
        if cfg.svf_std_mm[1] > 0:
            points = deform.displace(points, deform.integrate_velocity(velocity, cfg.svf_steps))
        points = F.interpolate(points.permute(0, 4, 1, 2, 3), size=self.crop_size, mode="trilinear", align_corners=True)
        return points.permute(0, 2, 3, 4, 1)

    def sample(self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu") -> SubjectBatch:
        """Draw ``batch`` new subjects.

        Returns:
            A :class:`SubjectBatch` with ``tissue_maps [B, C, *crop_size]`` on ``device``.
        """
        tissues = self.template(device)[:, 1:]  # background is 1 - the rest
        volume = self.anatomy.volume(self.spacing_mm)
        points = self.sample_points(batch, generator, device)
        d, h, w = self.crop_size
        stacked = points.reshape(1, batch * d, h, w, 3)  # one grid_sample for the whole batch
        sampled = deform.sample(tissues, stacked).view(tissues.shape[1], batch, d, h, w).transpose(0, 1)
        maps = sampled.new_empty(batch, 1 + tissues.shape[1], d, h, w)
        maps[:, 1:] = sampled
        del sampled
        torch.sum(maps[:, 1:], dim=1, out=maps[:, 0])
        maps[:, 0].neg_().add_(1).clamp_(min=0)  # background = 1 - tissues, also outside the template
        ids = volume.tissue_ids
        if self.lesions is not None and (self.lesions.wmh_probability > 0 or self.lesions.tumour_probability > 0):
            maps, ids = add_lesions(maps, ids, self.spacing_mm, self.lesions, generator)
        field = sample_field_strength(batch, tuple(self.contrast.field_strengths), generator)
        params = sample_tissue_parameters(
            field, self.contrast.tissue_relative_std, generator, self.contrast.tissue_independent_std
        )
        return SubjectBatch(maps.contiguous(), ids, field.to(device), params.to(device), self.spacing_mm)
