"""Cross-sequence reconstruction: render sequence B's image from anatomy(A) + sequence code(B).

This only works if the anatomy part carries the anatomy and the sequence code carries
the contrast, so it pushes the split to hold the right information. Loss: MSE over all
patches of B (per-patch normalised like the masked reconstruction when configured).
"""

from __future__ import annotations

import torch

from prism.objectives.base import Objective, PretrainStep
from prism.objectives.masked_reconstruction import masked_patch_mse, normalise_patches


class CrossSequenceSwap(Objective):
    """Decode each view's anatomy with the next view's sequence code (within the subject).

    Args:
        weight: loss weight.
        norm_pix_loss: per-patch normalised targets.
    """

    requires_pairs = True

    def __init__(self, weight: float = 1.0, norm_pix_loss: bool = True):
        super().__init__(weight)
        self.norm_pix_loss = norm_pix_loss

    def compute(self, step: PretrainStep) -> torch.Tensor:
        b, v = step.num_subjects, step.num_views
        partner = (torch.arange(v, device=step.target.device) + 1) % v  # view j = i + 1 (cyclic)
        valid = step.pair_mask()[:, torch.arange(v), partner].reshape(-1).float()  # [N]
        flat_partner = (torch.arange(b, device=partner.device).unsqueeze(1) * v + partner).reshape(-1)
        anatomy, code = step.features["anatomy"], step.features["sequence_code"]
        prediction = step.network.decode(anatomy, code[flat_partner], step.ids_restore, step.grid)
        target = step.target[flat_partner]
        if self.norm_pix_loss:
            target = normalise_patches(target)
        weights = valid.unsqueeze(1).expand(-1, target.shape[1])
        return masked_patch_mse(prediction, target, weights)
