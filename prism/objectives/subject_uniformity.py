"""Subject uniformity: pooled anatomy of different subjects spread over the sphere (Wang & Isola 2020).

The invariance term pulls two sequences of one subject together; nothing pushes *different* subjects
apart, and measured here the pooled anatomy of different subjects kept a cosine of 0.27-0.30 under the
full objective (0.08 under masked reconstruction alone, benchmarks/results/separation.md): a component
shared by every subject, which carries no anatomy and dominates any cosine or nearest-neighbour use of
the features. This term is the uniformity half of Wang & Isola's alignment/uniformity loss,
``log mean exp(-t * |p - q|^2)`` over unit-normalised pooled anatomy ``p`` of this batch against ``q``:
the other subjects of the batch and a bank of recent detached pooled vectors (3D batches hold only a
few subjects, MoCo-style). Views of one subject are never each other's negatives, so it does not fight
the invariance term. It needs no pairs and runs on single-sequence data too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prism.objectives.base import Objective, PretrainStep
from prism.objectives.feature_bank import FeatureBank


def uniformity(points: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log mean exp(-t |p - q|^2)`` over the ``valid`` ``[M, Q]`` pairs of unit vectors ``points`` ``[M, C]``
    and ``negatives`` ``[Q, C]`` (``|p - q|^2 = 2 - 2 p.q`` on the sphere)."""
    logits = -temperature * (2 - 2 * points @ negatives.T)
    logits = logits.masked_fill(~valid, float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(int(valid.sum()))


class SubjectUniformity(Objective):
    """Uniformity of pooled anatomy across subjects, against in-batch subjects and a bank of recent ones.

    Args:
        weight: loss weight.
        anatomy_dim: width of anatomy tokens.
        bank_size: how many recent pooled anatomy vectors serve as extra negatives (0: the batch only).
        temperature: ``t`` in ``exp(-t |p - q|^2)`` (2, as in Wang & Isola).
    """

    def __init__(self, weight: float = 1.0, anatomy_dim: int = 192, bank_size: int = 512, temperature: float = 2.0):
        super().__init__(weight)
        if temperature <= 0:
            raise ValueError(f"SubjectUniformity: temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.bank = FeatureBank(bank_size, anatomy_dim) if bank_size > 0 else None

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        present = step.view_present
        points = F.normalize(step.features["anatomy"].float().mean(dim=1)[present], dim=-1)
        subject = torch.arange(step.num_subjects, device=points.device).repeat_interleave(step.num_views)[present.to(points.device)]
        negatives, valid = points, subject[:, None] != subject[None, :]
        if self.bank is not None and len(self.bank) > 0:
            banked, _ = self.bank.filled()
            negatives = torch.cat([points, banked])
            valid = torch.cat([valid, valid.new_ones(len(points), len(banked))], dim=1)
        if self.bank is not None:
            self.bank.add(points, subject)  # after use: this batch's views are never their own negatives
        if not bool(valid.any()):
            return None
        return uniformity(points, negatives, valid, self.temperature)
