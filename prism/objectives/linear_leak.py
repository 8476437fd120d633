"""Linear leak penalty: what a freshly fitted linear probe reads of the sequence in pooled anatomy.

The learned adversary (``adversarial_sequence``) plays an online game with the encoder, and measured
here it is fooled while a *new* linear probe still reads the sequence from pooled anatomy tokens
(benchmarks/results/separation.md: 0.54 with four sequences, chance 0.25). This objective uses the
same probe the separation benchmark uses, refitted in closed form at every step: a ridge regression
from standardised pooled anatomy to one-hot sequence type, fitted on a memory bank of recent
detached features (the batch alone is far too small). Its weights point along the directions that
carry the sequence. The penalty is the squared difference between the probe's outputs for two
sequences of one subject: their anatomy is the same, so that difference is the sequence and nothing
else. The gradient only moves the two views' features together along the probe's few directions;
unlike dividing every channel by its spread (tried: it collapsed the features), it gives nothing for
shrinking features as a whole. Pairs are needed; batches without them skip the term.

The bank is a buffer of the last ``bank_size`` pooled anatomy vectors (saved in checkpoints with
the module; the term waits until it holds ``min_bank`` vectors of at least two sequence types).

``subject_centred`` stores each view's pooled vector minus the mean of its subject's views in that
step, so the probe is fitted on the within-subject residual only. Why, measured (separation.md,
2026-12-07 late): on raw pooled vectors the bank spans ~64 training steps, and the features drift
between steps by far more than the sequence moves them (within-subject variance is ~1% of the total
on held-out subjects), so the probe fitted on the bank read almost nothing and the penalty sat at
~1e-4 while a fresh probe on one frozen encoder read the sequence at 0.49 (its paired-difference
value 0.27). The two views of a subject are encoded by the same weights in the same step, so their
residual carries no drift and no subject: what is left is the sequence offset a held-out probe reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.evaluation.probes import ridge_fit, ridge_predict
from prism.models.sequence_eraser import within_subject_residuals
from prism.objectives.base import Objective, PretrainStep
from prism.objectives.cross_sequence_invariance import view_pairs
from prism.objectives.feature_bank import FeatureBank
from prism.sequences import NUM_SEQUENCE_TYPES


class LinearLeakPenalty(Objective):
    """Squared paired difference of a closed-form ridge probe's sequence prediction.

    Args:
        weight: loss weight.
        anatomy_dim: width of anatomy tokens.
        bank_size: how many recent pooled anatomy vectors the probe is fitted on.
        min_bank: vectors needed before the term starts.
        l2: ridge penalty (the separation benchmark's probe uses 1.0).
        subject_centred: fit the probe on within-subject residuals (see the module docstring).
    """

    requires_pairs = True

    def __init__(self, weight: float = 1.0, anatomy_dim: int = 192, bank_size: int = 512, min_bank: int = 128, l2: float = 1.0,
                 subject_centred: bool = False):
        super().__init__(weight)
        if not 2 <= min_bank <= bank_size:
            raise ValueError(f"LinearLeakPenalty: need 2 <= min_bank <= bank_size, got min_bank={min_bank}, bank_size={bank_size}.")
        self.l2 = float(l2)
        self.min_bank = min_bank
        self.subject_centred = subject_centred
        self.bank = FeatureBank(bank_size, anatomy_dim)

    def probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The ridge probe fitted on the bank, or ``None`` while the bank is too small."""
        vectors, labels = self.bank.filled()
        if len(labels) < self.min_bank or len(labels.unique()) < 2:
            return None
        one_hot = F.one_hot(labels, NUM_SEQUENCE_TYPES)
        return ridge_fit(vectors, one_hot, self.l2)

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        pooled = step.features["anatomy"].float().mean(dim=1)
        probe = self.probe()  # fitted before this batch enters the bank: the batch is held out
        known = step.view_present & (step.sequence_id >= 0)
        bank_vectors = pooled
        if self.subject_centred:
            bank_vectors, known = within_subject_residuals(pooled.detach(), step.num_views, known)
        if bool(known.any()):
            self.bank.add(bank_vectors[known], step.sequence_id[known])
        if probe is None:
            return None
        first, second = view_pairs(step)
        mean, std, weights = (t.detach() for t in probe)
        difference = ridge_predict(mean, std, weights, pooled[first]) - ridge_predict(mean, std, weights, pooled[second])
        return difference.pow(2).sum(dim=1).mean().float()
