"""Adversarial separation: anatomy features must not reveal the sequence.

A classifier predicts the sequence type from the anatomy part through a gradient
reversal layer (Ganin & Lempitsky, 2015): the classifier descends the cross-entropy,
the encoder ascends it, so at equilibrium anatomy features carry no sequence
information. Applied to pooled anatomy and to individual tokens (segmentation heads
read tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism.objectives.base import Objective, PretrainStep
from prism.sequences import NUM_SEQUENCE_TYPES


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _GradientReversal.apply(x, scale)


class AdversarialSequence(Objective):
    """Sequence classifier on anatomy features behind gradient reversal.

    Args:
        weight: loss weight.
        anatomy_dim: width of anatomy tokens.
        reversal_scale: strength of the reversed gradient reaching the encoder.
        hidden_dim: classifier hidden width.
    """

    def __init__(self, weight: float = 1.0, anatomy_dim: int = 192, reversal_scale: float = 1.0, hidden_dim: int = 128):
        super().__init__(weight)
        self.reversal_scale = reversal_scale
        self.classifier = nn.Sequential(nn.Linear(anatomy_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, NUM_SEQUENCE_TYPES))

    def logits(self, anatomy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled logits ``[N, T]`` and token logits ``[N, K, T]`` (gradient reversed into ``anatomy``)."""
        reversed_tokens = reverse_gradient(anatomy.float(), self.reversal_scale)
        return self.classifier(reversed_tokens.mean(dim=1)), self.classifier(reversed_tokens)

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        known = step.view_present & (step.sequence_id >= 0)
        if not bool(known.any()):
            return None
        pooled, tokens = self.logits(step.features["anatomy"][known])
        target = step.sequence_id[known]
        token_loss = F.cross_entropy(tokens.flatten(0, 1), target.repeat_interleave(tokens.shape[1]))
        return 0.5 * (F.cross_entropy(pooled, target) + token_loss)
