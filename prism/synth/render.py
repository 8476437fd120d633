"""Render subjects under MR sequences: physics contrast or random-GMM contrast.

:func:`render` is the functional entry point a fine-tuning pipeline can call to
re-render given anatomy under another sequence: it draws (or takes) acquisition
parameters, evaluates the signal equation of every tissue channel and mixes the
channels by their partial-volume probabilities, ``image = sum_c p_c * S_c``. It returns
the raw signal (no artefacts, not normalised); ``prism.synth.artefacts`` adds those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from prism.sequences import NUM_ACQUISITION_PARAMETERS
from prism.synth.config import ContrastConfig
from prism.synth.lesions import smooth_noise
from prism.synth.physics import T1, null_inversion_time, tissue_signal
from prism.synth.recipes import NULL_CSF, TI_INDEX, Recipe, get_recipe, sample_acquisition, with_overrides
from prism.synth.subjects import SubjectBatch
from prism.synth.tissues import TISSUE_LABELS


@dataclass
class Rendered:
    """N rendered views.

    Attributes:
        image: float32 ``[N, D, H, W]`` magnitude signal (arbitrary scale, >= 0).
        acq_params: float32 ``[N, P]`` (s / deg / T, ``ACQUISITION_PARAMETERS`` order).
        acq_present: bool ``[N, P]``.
        sequence_id: int64 ``[N]`` (``prism.sequences.SEQUENCE_TYPES``; -1 for random-GMM views).
        recipes: recipe name of each view (``"GMM"`` for random-GMM views).
    """

    image: torch.Tensor
    acq_params: torch.Tensor
    acq_present: torch.Tensor
    sequence_id: torch.Tensor
    recipes: list[str]


def render(
    subjects: SubjectBatch | torch.Tensor,
    recipe: str | Sequence[str],
    generator: torch.Generator,
    params: torch.Tensor | None = None,
    subject_index: torch.Tensor | None = None,
    contrast: ContrastConfig | None = None,
) -> Rendered:
    """Render subjects under sequence recipes with their signal equations.

    Args:
        subjects: a :class:`SubjectBatch`, or int labels ``[B, D, H, W]`` with values of
            ``prism.synth.tissues.TISSUE_LABELS`` (wrapped by ``SubjectBatch.from_labels``).
        recipe: one recipe name for all renders, or one per render (``prism.synth.recipes.RECIPES``).
        generator: CPU generator (all randomness).
        params: optional ``[N, P]`` acquisition parameters to use instead of sampling
            (s / deg / T; InversionTime <= 0 for FLAIR means "null the subject's CSF").
        subject_index: int64 ``[N]``: which subject each render shows (default ``arange(B)``).
        contrast: physics ranges (field strengths, FLAIR null jitter, recipe overrides).

    Returns:
        :class:`Rendered` with N views.
    """
    contrast = contrast or ContrastConfig()
    if not isinstance(subjects, SubjectBatch):
        subjects = SubjectBatch.from_labels(
            subjects, generator, field_strengths=tuple(contrast.field_strengths),
            tissue_relative_std=contrast.tissue_relative_std, tissue_independent_std=contrast.tissue_independent_std,
        )
    maps = subjects.tissue_maps
    device = maps.device
    b = maps.shape[0]
    if subject_index is None:
        subject_index = torch.arange(b)
    subject_index = subject_index.cpu().long()
    n = len(subject_index)
    names = [recipe] * n if isinstance(recipe, str) else list(recipe)
    if len(names) != n:
        raise ValueError(f"Got {len(names)} recipes for {n} renders; pass one recipe or one per render.")
    recipes = [with_overrides(get_recipe(r), contrast.recipe_overrides.get(r)) for r in names]
    field = subjects.field_strength.cpu()[subject_index]
    sampled, present = sample_acquisition(recipes, field, generator)
    if params is not None:
        if tuple(params.shape) != (n, NUM_ACQUISITION_PARAMETERS):
            raise ValueError(f"params must be [N, {NUM_ACQUISITION_PARAMETERS}] = [{n}, 5], got {tuple(params.shape)}.")
        sampled = torch.where(present, params.detach().cpu().float(), sampled)
    tissue = subjects.channel_params().cpu()[subject_index]  # [N, C, 4]
    _fill_csf_null(sampled, recipes, subjects.tissue_params.cpu()[subject_index], contrast, generator)
    family = torch.tensor([r.family_id for r in recipes])
    signal = tissue_signal(tissue, sampled, family).to(device)  # [N, C]
    image = mix_channels(signal, maps, subject_index)
    sequence_ids = torch.tensor([r.sequence_id for r in recipes], dtype=torch.long)
    return Rendered(image, sampled, present, sequence_ids, names)


def mix_channels(weights: torch.Tensor, maps: torch.Tensor, subject_index: torch.Tensor) -> torch.Tensor:
    """``out[n] = sum_c weights[n, c] * maps[subject_index[n], c]`` -> ``[N, D, H, W]``.

    When the renders are V consecutive views per subject (the usual layout) this is one
    batched matrix product that never copies the maps.
    """
    b, c = maps.shape[:2]
    n = weights.shape[0]
    if n % b == 0 and torch.equal(subject_index, torch.arange(b).repeat_interleave(n // b)):
        flat = maps.reshape(b, c, -1)
        out = torch.bmm(weights.view(b, n // b, c).to(maps.dtype), flat)
        return out.view(n, *maps.shape[2:])
    return torch.einsum("nc,ncdhw->ndhw", weights.to(maps.dtype), maps[subject_index.to(maps.device)])


def _fill_csf_null(
    params: torch.Tensor, recipes: list[Recipe], all_tissues: torch.Tensor,
    contrast: ContrastConfig, generator: torch.Generator,
) -> None:
    """Set a CSF-nulling InversionTime (x jitter) where the recipe asks for one and none was given."""
    wants = torch.tensor([r.ranges[1.5].get("InversionTime") == NULL_CSF for r in recipes])
    wants &= params[:, TI_INDEX] <= 0
    if not bool(wants.any()):
        return
    csf_t1 = all_tissues[:, TISSUE_LABELS["csf"], T1]
    lo, hi = contrast.flair_null_jitter
    jitter = lo + (hi - lo) * torch.rand(len(recipes), generator=generator)
    ti = null_inversion_time(csf_t1, params[:, 0]) * jitter
    params[:, TI_INDEX] = torch.where(wants, ti, params[:, TI_INDEX])


def render_gmm(
    subjects: SubjectBatch, subject_index: torch.Tensor, contrast: ContrastConfig, generator: torch.Generator,
    device_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SynthSeg-style random contrast: per view and tissue a Gaussian ``N(mean, std)``.

    Returns:
        ``[N, D, H, W]``: ``sum_c p_c (mean_c + std_c * eps)``, mean ~ U(gmm_mean), std ~ U(gmm_std).
    """
    maps = subjects.tissue_maps
    n, c = len(subject_index), maps.shape[1]
    lo, hi = contrast.gmm_mean
    mean = lo + (hi - lo) * torch.rand(n, c, generator=generator)
    mean[:, 0] *= (torch.rand(n, generator=generator) < 0.5).float()  # background often black
    slo, shi = contrast.gmm_std
    std = slo + (shi - slo) * torch.rand(n, c, generator=generator)
    gen = device_generator if device_generator is not None else generator
    eps = torch.randn((n, *maps.shape[2:]), generator=gen, device=maps.device)
    mixed_mean = mix_channels(mean.to(maps.device), subjects.tissue_maps, subject_index)
    mixed_std = mix_channels(std.to(maps.device), subjects.tissue_maps, subject_index)
    return (mixed_mean + mixed_std * eps).clamp_min(0)


def texture(image: torch.Tensor, std: tuple[float, float], control_points: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth within-tissue intensity variation: ``image * (1 + s * field)``, s ~ U(std) per view."""
    n = image.shape[0]
    s = std[0] + (std[1] - std[0]) * torch.rand(n, generator=generator)
    if float(s.max()) <= 0:
        return image
    field = smooth_noise(n, control_points, tuple(image.shape[1:]), generator, image.device)[:, 0]
    return image * (1 + s.to(image.device).view(-1, 1, 1, 1) * field).clamp_min(0)
