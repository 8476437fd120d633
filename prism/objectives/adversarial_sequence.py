"""Adversarial separation: anatomy features must not reveal the sequence.

A classifier (the adversary) learns to predict the sequence type from the anatomy part;
the encoder is pushed the other way. Two ways of pushing, chosen by ``mode``:

* ``confusion`` (default; Tzeng et al. 2015, Alvi et al. 2018 "Turning a blind eye"): the
  adversary trains on detached anatomy features with the ordinary cross-entropy, and the
  encoder minimises the cross-entropy between the adversary's prediction and the uniform
  distribution over the sequence types of the batch. Its optimum is "the adversary cannot
  tell", which is what invariance means.
* ``reversal`` (Ganin & Lempitsky 2015): one cross-entropy, its gradient reversed into the
  encoder. The encoder then maximises the adversary's loss, and a measured failure of that on
  our pretraining runs: it can do so by making the adversary confidently *wrong* (held-out
  adversary accuracy 0.0 with 4 sequences, while a fresh linear probe still read the sequence
  at 0.70), i.e. a relabelling that keeps every bit of sequence information.

Applied to pooled anatomy and to individual tokens (segmentation heads read tokens).

``standardise_input`` standardises each channel over the batch before the classifier (pooled and
token inputs separately, gradients flowing through the statistics), as the separation benchmark's
linear probe does: a small difference that is consistent across subjects then weighs as much for the
adversary as for the probe, and shrinking the feature scale cannot hide it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism.objectives.base import Objective, PretrainStep
from prism.sequences import NUM_SEQUENCE_TYPES

MODES = ("confusion", "reversal")


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


def confusion_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(logits) and the uniform distribution over ``classes``."""
    return -logits.log_softmax(dim=-1)[..., classes].mean()


def standardise_channels(x: torch.Tensor, min_std: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit standard deviation per channel (last dim) over every other dim of ``x``."""
    rows = x.reshape(-1, x.shape[-1])
    return (x - rows.mean(dim=0)) / rows.std(dim=0, unbiased=False).clamp_min(min_std)


class AdversarialSequence(Objective):
    """Sequence classifier on anatomy features, played against the encoder.

    Args:
        weight: loss weight (scales the adversary's and the encoder's terms alike).
        anatomy_dim: width of anatomy tokens.
        reversal_scale: strength of the adversarial gradient reaching the encoder
            (the confusion term's factor, or the reversal layer's scale).
        hidden_dim: classifier hidden width.
        mode: ``confusion`` or ``reversal`` (see the module docstring).
        standardise_input: standardise each input channel over the batch (see the module docstring).
    """

    def __init__(self, weight: float = 1.0, anatomy_dim: int = 192, reversal_scale: float = 1.0, hidden_dim: int = 128,
                 mode: str = "confusion", standardise_input: bool = False):
        super().__init__(weight)
        if mode not in MODES:
            raise ValueError(f"AdversarialSequence: mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.reversal_scale = reversal_scale
        self.standardise_input = standardise_input
        self.classifier = nn.Sequential(nn.Linear(anatomy_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, NUM_SEQUENCE_TYPES))

    def logits(self, anatomy: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The adversary's pooled logits ``[N, T]`` and token logits ``[N, K, T]``.

        ``frozen``: no gradient reaches the classifier's parameters (only the encoder learns).
        """
        anatomy = anatomy.float()
        pooled, tokens = anatomy.mean(dim=1), anatomy
        if self.standardise_input:
            pooled, tokens = standardise_channels(pooled), standardise_channels(tokens)
        params = {name: p.detach() if frozen else p for name, p in self.classifier.named_parameters()}
        call = torch.func.functional_call
        return call(self.classifier, params, (pooled,)), call(self.classifier, params, (tokens,))

    @staticmethod
    def _cross_entropy(pooled: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        token_loss = F.cross_entropy(tokens.flatten(0, 1), target.repeat_interleave(tokens.shape[1]))
        return 0.5 * (F.cross_entropy(pooled, target) + token_loss)

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        known = step.view_present & (step.sequence_id >= 0)
        if not bool(known.any()):
            return None
        anatomy, target = step.features["anatomy"][known], step.sequence_id[known]
        if self.mode == "reversal":
            return self._cross_entropy(*self.logits(reverse_gradient(anatomy.float(), self.reversal_scale)), target)
        adversary = self._cross_entropy(*self.logits(anatomy.detach()), target)
        pooled, tokens = self.logits(anatomy, frozen=True)
        classes = target.unique()
        confusion = 0.5 * (confusion_loss(pooled, classes) + confusion_loss(tokens, classes))
        return adversary + self.reversal_scale * confusion
