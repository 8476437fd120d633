"""Linear erasure of the sequence from anatomy tokens: project out the directions sequences shift them along.

Measured on held-out subjects (benchmarks/results/separation.md, 2026-12-07 late): the two views of a subject
agree almost exactly in pooled anatomy (within-subject variance ~1% of the total), yet a fresh linear probe
reads the sequence at ~0.5 (chance 0.25), because that small within-subject residual is shifted by a
*consistent* offset per sequence type. Removing those few offset directions (estimated on a training stream,
applied to held-out subjects) cut the probe from 0.53 to 0.36; losses that push the offsets towards zero
(an online adversary, a refitted ridge probe) could not.

This module keeps a running mean, per sequence type, of the within-subject residual of pooled anatomy (each
view minus the mean of its subject's views in that step: no subject content, and no drift between steps,
since both views come from the same weights), and projects every anatomy token onto the orthogonal complement
of their span (at most one direction per sequence type; concept erasure in the spirit of LEACE, Belrose et al.
2023, and INLP, Ravfogel et al. 2020). The projection is linear and fixed between updates, so gradients flow
through it and the fine-tuning loader folds it into the anatomy projection
(``prism.finetune.checkpoint.fold_eraser``). The statistics
update only when the pretraining module calls :meth:`update` (train steps with pairs); eval is deterministic.

Measured in training (``model.erase_sequence=true``, 2 seeds x 900 CPU steps, separation.md 2026-12-07 late):
the leak did not fall (0.520 / 0.477 vs 0.493 / 0.465 without it) and the anatomy agreement got worse, so it
is off by default: with the offsets erased, reconstruction and swap push the sequence into new directions.
"""

from __future__ import annotations

import torch
from torch import nn


class SequenceEraser(nn.Module):
    """``x [..., A] -> x - (x B^T) B`` with ``B`` an orthonormal basis of the per-sequence residual means.

    Args:
        channels: A, the anatomy width.
        num_sequence_types: rows of the running class-mean table.
        momentum: weight of the old class mean per update (a type seen for the first time takes the batch mean).
        relative_tolerance: directions whose singular value is below this fraction of the largest are not erased (noise).
    """

    def __init__(self, channels: int, num_sequence_types: int, momentum: float = 0.99, relative_tolerance: float = 1e-3):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SequenceEraser: momentum must be in [0, 1), got {momentum}.")
        self.momentum, self.relative_tolerance = momentum, relative_tolerance
        self.register_buffer("class_means", torch.zeros(num_sequence_types, channels))
        self.register_buffer("seen", torch.zeros(num_sequence_types, dtype=torch.bool))
        self.register_buffer("basis", torch.zeros(num_sequence_types, channels))  # zero rows erase nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        basis = self.basis.to(x.dtype)
        return x - (x @ basis.T) @ basis

    @torch.no_grad()
    def update(self, residuals: torch.Tensor, sequence_id: torch.Tensor) -> None:
        """Fold a batch of within-subject residuals ``[M, A]`` with their sequence types ``[M]`` (>= 0) in."""
        if len(sequence_id) == 0:
            return
        residuals = residuals.detach().to(self.class_means.dtype)
        types = self.class_means.shape[0]
        sums = torch.zeros_like(self.class_means).index_add_(0, sequence_id, residuals)
        counts = torch.bincount(sequence_id, minlength=types).to(sums.dtype).unsqueeze(1)
        batch_means = sums / counts.clamp_min(1)
        present = counts[:, 0] > 0
        blended = torch.where(self.seen.unsqueeze(1), self.momentum * self.class_means + (1 - self.momentum) * batch_means, batch_means)
        self.class_means.copy_(torch.where(present.unsqueeze(1), blended, self.class_means))
        self.seen |= present
        _, singular, directions = torch.linalg.svd(self.class_means.float(), full_matrices=False)
        keep = singular > self.relative_tolerance * singular.max().clamp_min(1e-12)
        self.basis.copy_(directions * keep.unsqueeze(1).to(directions.dtype))


def within_subject_residuals(pooled: torch.Tensor, num_views: int, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's pooled vector minus its subject's mean over known views (views subject-major, ``[B*V, A]``).

    Returns ``(residuals, kept)``: ``kept`` marks known views of subjects with at least two known views.
    """
    per_subject = pooled.reshape(-1, num_views, pooled.shape[-1])
    weights = known.reshape(-1, num_views).to(pooled.dtype)
    counts = weights.sum(dim=1, keepdim=True)
    means = (per_subject * weights.unsqueeze(-1)).sum(dim=1) / counts.clamp_min(1)
    residuals = (per_subject - means.unsqueeze(1)).reshape_as(pooled)
    return residuals, known & (counts >= 2).expand_as(weights).reshape(-1)
