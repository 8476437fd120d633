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

``position_momentum`` > 0 first subtracts from each token a running mean of the anatomy tokens at
its grid position. Two views of a subject share the window and the mask, so content that depends
only on the position (the position embedding carried through the residual stream) is identical in
both: it meets the cosine terms and the variance hinge without saying anything about the anatomy
(measured: anatomy tokens of *different* subjects at one position had cosine 0.72-0.74 under the
full objective, 0.08 under masked reconstruction alone). Removing the per-position mean makes both
terms, and the spread the hinge demands, come from what differs between subjects. A running mean
(not the batch's) because with 75 % masking and a few subjects per batch most positions are kept by
one subject only. Under DDP the batch statistics are summed over ranks first, so every rank holds
the same mean; it is in the state dict, so a resumed run continues with the mean it was saved with.

``position_weight`` > 0 (needs ``position_momentum``) also penalises the position-only content itself:
the squared cosine between each (globally centred) token and its position's (globally centred) running
mean. With tokens = position part + subject part this is the fraction of the token the position part
explains, the same quantity the cosine between *different* subjects at one position measures; removing
the running mean before the invariance terms only stops those terms from rewarding it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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
        position_momentum: momentum of the running per-position mean subtracted from the tokens
            first (see the module docstring); 0 = off.
        position_weight: weight of the squared cosine between each token and its position's running
            mean (the position-only content; needs ``position_momentum`` > 0).
    """

    requires_pairs = True

    def __init__(self, weight: float = 1.0, token_weight: float = 1.0, pooled_weight: float = 0.5,
                 variance_weight: float = 1.0, covariance_weight: float = 0.04, std_target: float = 1.0,
                 mse_weight: float = 0.0, centre: bool = False, standardised_weight: float = 0.0,
                 position_momentum: float = 0.0, position_weight: float = 0.0):
        super().__init__(weight)
        if not 0.0 <= position_momentum < 1.0:
            raise ValueError(f"CrossSequenceInvariance: position_momentum must be in [0, 1), got {position_momentum}.")
        if position_weight > 0 and position_momentum == 0:
            raise ValueError("CrossSequenceInvariance: position_weight > 0 needs position_momentum > 0 (the running per-position mean).")
        self.position_momentum, self.position_weight = position_momentum, position_weight
        self.register_buffer("position_mean", None)  # [positions, A], sized at the first batch (or by a checkpoint)
        self.register_buffer("position_seen", None)
        self.token_weight, self.pooled_weight, self.mse_weight, self.centre = token_weight, pooled_weight, mse_weight, centre
        self.variance_weight, self.covariance_weight, self.std_target = variance_weight, covariance_weight, std_target
        self.standardised_weight = standardised_weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Size the lazily created running mean from the checkpoint before the standard load copies it."""
        for name in ("position_mean", "position_seen"):
            saved = state_dict.get(prefix + name)
            if saved is not None and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    def update_position_mean(self, anatomy: torch.Tensor, ids_keep: torch.Tensor, num_positions: int) -> None:
        """Move the running per-position mean towards this batch's (summed over DDP ranks)."""
        with torch.no_grad():
            flat_ids, flat = ids_keep.reshape(-1), anatomy.detach().float().reshape(-1, anatomy.shape[-1])
            self.ensure_position_mean(num_positions, flat.shape[1], flat.device)
            counts = torch.zeros(num_positions, device=flat.device).index_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=flat.dtype))
            sums = torch.zeros_like(self.position_mean).index_add_(0, flat_ids, flat)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(counts)
                dist.all_reduce(sums)
            here = counts > 0
            batch_mean = sums[here] / counts[here, None]
            momentum = torch.where(self.position_seen[here], self.position_momentum, 0.0).unsqueeze(1)
            self.position_mean[here] = momentum * self.position_mean[here] + (1 - momentum) * batch_mean
            self.position_seen |= here

    def ensure_position_mean(self, num_positions: int, width: int, device: torch.device) -> None:
        """Start an empty running mean when there is none of this size; move a restored one to ``device``."""
        if self.position_mean is None or self.position_mean.shape != (num_positions, width):
            self.position_mean = torch.zeros(num_positions, width, device=device)
            self.position_seen = torch.zeros(num_positions, dtype=torch.bool, device=device)
        elif self.position_mean.device != device:
            self.position_mean, self.position_seen = self.position_mean.to(device), self.position_seen.to(device)

    def position_centred(self, anatomy: torch.Tensor, ids_keep: torch.Tensor, num_positions: int) -> torch.Tensor:
        """``anatomy`` ``[N, K, A]`` minus the running mean at each token's grid position (``ids_keep`` ``[N, K]``).
        Only reads the running mean: :meth:`forward` updates it."""
        self.ensure_position_mean(num_positions, anatomy.shape[-1], anatomy.device)
        return anatomy.float() - self.position_mean[ids_keep]

    def forward(self, step: PretrainStep) -> torch.Tensor | None:
        if self.position_momentum > 0 and self.training and step.ids_keep is not None:
            # Every training step, with pairs or without (compute() is then skipped): every DDP rank joins
            # the same sums every step, so a rank without pairs never leaves the others waiting.
            self.update_position_mean(step.features["anatomy"], step.ids_keep, step.num_positions)
        return super().forward(step)

    def compute(self, step: PretrainStep) -> torch.Tensor:
        i, j = view_pairs(step)
        anatomy = step.features["anatomy"]
        if self.position_momentum > 0:
            if step.ids_keep is None:
                raise ValueError("CrossSequenceInvariance(position_momentum > 0) needs the kept tokens' grid indices (PretrainStep.ids_keep).")
            raw = anatomy
            anatomy = self.position_centred(anatomy, step.ids_keep, step.num_positions)
            if self.position_weight > 0:
                position_share = self.position_share(raw[step.view_present], step.ids_keep[step.view_present])
                return self.loss_from(anatomy[i], anatomy[j]) + self.position_weight * position_share
        return self.loss_from(anatomy[i], anatomy[j])

    def position_share(self, tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Mean squared cosine between globally centred ``tokens`` ``[M, K, A]`` and their positions'
        centred running means (the running means are detached: only the tokens move)."""
        global_mean = self.position_mean[self.position_seen].mean(dim=0)
        direction = self.position_mean[ids_keep] - global_mean
        return F.cosine_similarity(tokens.float() - global_mean, direction, dim=-1).pow(2).mean()
