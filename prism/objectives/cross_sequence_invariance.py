"""Cross-sequence invariance of the anatomy part (VICReg-style, token-wise and pooled).

For two sequences of one subject at the same window (the mask is shared, so kept token
k is the same place in both), anatomy tokens should agree. Agreement is measured on
batch-centred tokens (cosine) and as VICReg's mean squared difference: a cosine of
uncentred tokens is near 1 for any two tokens once they share a large common component,
so it can be met while the subject-specific part still differs between sequences, and a
cosine alone leaves the token norm free to carry the sequence. Why VICReg-style agreement
and not InfoNCE: 3D batches are small (2-8 subjects per GPU), too few negatives for a
batch contrastive loss, while token-wise agreement with a variance floor and a
decorrelation term needs no negatives and uses thousands of token pairs per batch.
The variance hinge keeps every anatomy channel's spread above ``std_target`` so
agreement cannot be reached by collapsing to a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.objectives.base import Objective, PretrainStep


def variance_hinge(features: torch.Tensor, std_target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """``mean(relu(std_target - std(features, dim=0)))`` over channels, features ``[M, C]``."""
    std = torch.sqrt(features.var(dim=0) + eps)
    return F.relu(std_target - std).mean()


def covariance_penalty(features: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances / C (VICReg), features ``[M, C]``."""
    m, c = features.shape
    centred = features - features.mean(dim=0)
    cov = centred.T @ centred / max(m - 1, 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return off_diagonal.pow(2).sum() / c


def view_pairs(step: PretrainStep) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (into N = B*V) of every valid ordered-once pair (i < j) of views of one subject."""
    pairs = torch.triu(step.pair_mask(), diagonal=1).nonzero()
    subject, first, second = pairs.unbind(1)
    return subject * step.num_views + first, subject * step.num_views + second


class CrossSequenceInvariance(Objective):
    """Agreement of anatomy tokens across sequences of one subject, with variance/covariance terms.

    Args:
        weight: loss weight.
        token_weight: weight of token-wise cosine disagreement (1 - cos).
        pooled_weight: weight of pooled (mean token) cosine disagreement.
        mse_weight: weight of the mean squared difference of tokens and of pooled tokens
            (VICReg's invariance term; 0 leaves agreement to the cosines).
        centre: take the cosines of tokens centred on the batch's per-channel mean.
        standardised_weight: weight of the mean squared difference of pooled tokens with each
            channel divided by its (detached) batch standard deviation: what a linear probe sees,
            so a consistent difference in a low-variance channel counts as much as in any other.
        variance_weight, covariance_weight: anti-collapse terms (VICReg).
        std_target: minimal per-channel standard deviation.
    """

    requires_pairs = True

    def __init__(self, weight: float = 1.0, token_weight: float = 1.0, pooled_weight: float = 0.5,
                 variance_weight: float = 1.0, covariance_weight: float = 0.04, std_target: float = 1.0,
                 mse_weight: float = 0.0, centre: bool = False, standardised_weight: float = 0.0):
        super().__init__(weight)
        self.token_weight, self.pooled_weight, self.mse_weight, self.centre = token_weight, pooled_weight, mse_weight, centre
        self.variance_weight, self.covariance_weight, self.std_target = variance_weight, covariance_weight, std_target
        self.standardised_weight = standardised_weight

    def terms(self, first: torch.Tensor, second: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for anatomy tokens of paired views, each ``[M, K, A]``."""
        first, second = first.float(), second.float()
        flat = torch.cat([first, second]).reshape(-1, first.shape[-1])
        mean = flat.mean(dim=0) if self.centre else torch.zeros_like(flat[0])
        a, b = first - mean, second - mean
        pooled_first, pooled_second = first.mean(1), second.mean(1)
        pooled_std = torch.cat([pooled_first, pooled_second]).std(dim=0).detach() + 1e-3
        return {
            "token": (1 - F.cosine_similarity(a, b, dim=-1)).mean(),
            "pooled": (1 - F.cosine_similarity(a.mean(1), b.mean(1), dim=-1)).mean(),
            "mse": F.mse_loss(first, second) + F.mse_loss(pooled_first, pooled_second),
            "standardised": ((pooled_first - pooled_second) / pooled_std).pow(2).mean(),
            "variance": variance_hinge(flat, self.std_target),
            "covariance": covariance_penalty(flat),
        }

    def loss_from(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        t = self.terms(first, second)
        return (self.token_weight * t["token"] + self.pooled_weight * t["pooled"] + self.mse_weight * t["mse"]
                + self.standardised_weight * t["standardised"]
                + self.variance_weight * t["variance"] + self.covariance_weight * t["covariance"])

    def compute(self, step: PretrainStep) -> torch.Tensor:
        i, j = view_pairs(step)
        anatomy = step.features["anatomy"]
        return self.loss_from(anatomy[i], anatomy[j])
