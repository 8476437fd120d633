"""Masked reconstruction (MAE): mean squared error on the removed patches only."""

from __future__ import annotations

import torch

from prism.objectives.base import Objective, PretrainStep


def normalise_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch zero-mean unit-variance targets (MAE's ``norm_pix_loss``): ``[N, L, P]``."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def masked_patch_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights * mse_per_patch) / sum(weights)`` with ``[N, L, P]`` inputs and ``[N, L]`` weights."""
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)


class MaskedReconstruction(Objective):
    """MAE loss on the removed patches of every present view.

    Args:
        weight: loss weight.
        norm_pix_loss: regress per-patch normalised voxels (MAE's better-features option).
    """

    def __init__(self, weight: float = 1.0, norm_pix_loss: bool = True):
        super().__init__(weight)
        self.norm_pix_loss = norm_pix_loss

    def target_for(self, patches: torch.Tensor) -> torch.Tensor:
        return normalise_patches(patches) if self.norm_pix_loss else patches

    def compute(self, step: PretrainStep) -> torch.Tensor:
        weights = step.mask * step.view_present.unsqueeze(1).to(step.mask.dtype)
        return masked_patch_mse(step.prediction, self.target_for(step.target), weights)

    def to_image_space(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Undo per-patch normalisation using the target's statistics (for pictures)."""
        if not self.norm_pix_loss:
            return prediction
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return prediction * std + mean
