"""One call from a seed to a finished prism batch: subjects, V sequences each, artefacts.

:class:`SynthGenerator` chains the engine's steps over a whole batch on one device:

1. ``SubjectSampler.sample``: B deformed subjects (+ lesions, + tissue physics);
2. V distinct recipes per subject (drawn from ``config.sequences``);
3. ``render`` (physics) or ``render_gmm`` (random contrast, p = ``contrast.gmm_probability``);
4. texture, bias field, noise, resolution, robust normalisation, gamma;
5. the batch dict of ``prism.data.batch`` (``image [B, V, D, H, W]`` ...).

Randomness comes from one CPU ``torch.Generator``; the voxel-wise noise is drawn on
the target device from a generator seeded by it, so the batch is a pure function of
(seed, device).
"""

from __future__ import annotations

from typing import Any

import torch

from prism.sequences import NUM_ACQUISITION_PARAMETERS
from prism.synth import artefacts
from prism.synth.anatomy import Anatomy
from prism.synth.config import SynthConfig
from prism.synth.render import Rendered, render, render_gmm, texture
from prism.synth.subjects import SubjectBatch, SubjectSampler


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded from ``generator`` (deterministic, consumes one draw)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


class SynthGenerator:
    """Generates whole synthetic batches.

    Args:
        config: engine configuration (ranges, sequences).
        crop_size: output (D, H, W) voxels.
        spacing_mm: working voxel size (1.0 = native template resolution).
        anatomy: anatomy source (default ICBM152 from nilearn).
    """

    def __init__(
        self,
        config: SynthConfig | None = None,
        crop_size: tuple[int, int, int] = (96, 96, 96),
        spacing_mm: float = 2.0,
        anatomy: Anatomy | None = None,
    ):
        self.config = config or SynthConfig()
        self.config.validate()
        self.sampler = SubjectSampler(
            anatomy, spacing_mm, crop_size, self.config.deformation, self.config.lesions, self.config.contrast
        )

    @property
    def spacing_mm(self) -> float:
        return self.sampler.spacing_mm

    def choose_recipes(self, batch: int, num_views: int, generator: torch.Generator) -> list[list[str]]:
        """V recipes per subject, distinct while V <= number of recipes (then with repeats)."""
        names = list(self.config.sequences)
        order = torch.rand(batch, max(num_views, len(names)), generator=generator).argsort(1) % len(names)
        return [[names[int(i)] for i in row[:num_views]] for row in order]

    def render_views(
        self, subjects: SubjectBatch, recipes: list[list[str]], generator: torch.Generator,
        device_gen: torch.Generator | None = None,
    ) -> tuple[Rendered, torch.Tensor]:
        """Render and corrupt every view; returns (rendered metadata, images ``[B * V, D, H, W]``)."""
        b, v = len(recipes), len(recipes[0])
        cfg = self.config
        subject_index = torch.arange(b).repeat_interleave(v)
        flat = [name for row in recipes for name in row]
        rendered = render(subjects, flat, generator, subject_index=subject_index, contrast=cfg.contrast)
        image = rendered.image
        use_gmm = torch.rand(b * v, generator=generator) < cfg.contrast.gmm_probability
        if bool(use_gmm.any()):
            gmm = render_gmm(subjects, subject_index, cfg.contrast, generator, device_gen)
            mask = use_gmm.to(image.device).view(-1, 1, 1, 1)
            image = torch.where(mask, gmm * image.flatten(1).amax(1).view(-1, 1, 1, 1), image)
            rendered.sequence_id = torch.where(use_gmm, -1, rendered.sequence_id)
            rendered.acq_present = rendered.acq_present & ~use_gmm[:, None]
            rendered.acq_params = torch.where(rendered.acq_present, rendered.acq_params, 0.0)
            rendered.recipes = ["GMM" if g else r for g, r in zip(use_gmm.tolist(), rendered.recipes)]
        foreground = subjects.foreground[subject_index.to(image.device)]
        image = texture(image, cfg.contrast.texture_std, cfg.contrast.texture_control_points, generator)
        image = artefacts.bias_field(image, cfg.artefacts, generator)
        image = artefacts.add_noise(image, foreground, cfg.artefacts, generator, device_gen)
        image = artefacts.resolution(image, self.spacing_mm, cfg.resolution, generator)
        image = artefacts.robust_normalise(
            image, foreground, cfg.artefacts.normalise_percentile, cfg.artefacts.clip_max
        )
        image = artefacts.random_gamma(image, cfg.artefacts.gamma_log_std, generator)
        return rendered, image.clamp_(0, cfg.artefacts.clip_max)

    def generate(
        self,
        batch_size: int,
        num_views: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        subject_prefix: str = "synth",
    ) -> dict[str, Any]:
        """One batch in the ``prism.data.batch`` structure.

        Returns:
            dict with ``image [B, V, D, H, W]`` float32 (per-view robustly normalised,
            background about 0), ``view_present [B, V]``, ``sequence_id [B, V]``,
            ``acq_params [B, V, P]``, ``acq_present [B, V, P]``, ``subject_id`` (B str),
            ``labels [B, D, H, W]`` int64 (``prism.synth.tissues.TISSUE_LABELS``) and
            ``recipe`` (B lists of V recipe names).
        """
        if batch_size < 1 or num_views < 1:
            raise ValueError(f"batch_size and num_views must be >= 1, got {batch_size}, {num_views}.")
        device = torch.device(device)
        device_gen = device_generator(generator, device)
        subjects = self.sampler.sample(batch_size, generator, device)
        recipes = self.choose_recipes(batch_size, num_views, generator)
        rendered, image = self.render_views(subjects, recipes, generator, device_gen)
        b, v, p = batch_size, num_views, NUM_ACQUISITION_PARAMETERS
        return {
            "image": image.view(b, v, *image.shape[1:]).float(),
            "view_present": torch.ones(b, v, dtype=torch.bool, device=device),
            "sequence_id": rendered.sequence_id.view(b, v).to(device),
            "acq_params": rendered.acq_params.view(b, v, p).float().to(device),
            "acq_present": rendered.acq_present.view(b, v, p).to(device),
            "subject_id": [f"{subject_prefix}-{i:03d}" for i in range(b)],
            "labels": subjects.labels,
            "recipe": [rendered.recipes[i * v:(i + 1) * v] for i in range(b)],
        }
