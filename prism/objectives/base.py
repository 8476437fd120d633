"""The interface every pretraining objective implements, and the record of one forward pass.

The pretraining module runs the encoder once per step (all views of all subjects, one
shared mask per subject so the views' kept tokens correspond) and hands the resulting
:class:`PretrainStep` to each objective. An objective returns its loss, or ``None``
when the batch cannot feed it (e.g. a pair objective on single-sequence data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class PretrainStep:
    """One forward pass over a batch; N = B * V volumes, flattened subject-major.

    Attributes:
        network: the ``PretrainNetwork`` (objectives may call ``network.decode``).
        num_subjects, num_views: B and V.
        volumes: ``[N, 1, D, H, W]`` input volumes.
        target: ``[N, L, P]`` patchified volumes (the reconstruction target).
        view_present: ``[N]`` bool; absent views contribute to no loss.
        sequence_id: ``[N]`` int64 (-1 unknown); acq_params / acq_present: ``[N, P]``.
        mask: ``[N, L]`` 1 = removed; ids_restore ``[N, L]``; grid: token grid.
        features: encoder outputs (``cls``, ``patch``, ``anatomy`` ``[N, K, A]``, ``sequence_code`` ``[N, S]``).
        prediction: ``[N, L, P]`` reconstruction of each view from its own anatomy and code.
        subject_id: list of B subject ids (for error messages).
        ids_keep: ``[N, K]`` grid index of each kept token (``features`` token k sits at ``ids_keep[:, k]``).
    """

    network: nn.Module
    num_subjects: int
    num_views: int
    volumes: torch.Tensor
    target: torch.Tensor
    view_present: torch.Tensor
    sequence_id: torch.Tensor
    acq_params: torch.Tensor
    acq_present: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    grid: tuple[int, int, int]
    features: dict[str, Any]
    prediction: torch.Tensor
    subject_id: list[str] = field(default_factory=list)
    ids_keep: torch.Tensor | None = None

    def per_subject(self, tensor: torch.Tensor) -> torch.Tensor:
        """Reshape a leading N = B*V axis to ``[B, V, ...]``."""
        return tensor.reshape(self.num_subjects, self.num_views, *tensor.shape[1:])

    @property
    def num_positions(self) -> int:
        """Tokens in the full (unmasked) grid: the range of ``ids_keep``."""
        return self.grid[0] * self.grid[1] * self.grid[2]

    def pair_mask(self) -> torch.Tensor:
        """``[B, V, V]`` True where views i != j of one subject are both present with different sequences."""
        present = self.per_subject(self.view_present)
        seq = self.per_subject(self.sequence_id)
        both = present.unsqueeze(2) & present.unsqueeze(1)
        different = (seq.unsqueeze(2) != seq.unsqueeze(1)) | (seq.unsqueeze(2) < 0)
        eye = torch.eye(self.num_views, dtype=torch.bool, device=both.device)
        return both & different & ~eye


class Objective(nn.Module):
    """Base class: a weighted loss computed from a :class:`PretrainStep`.

    Args:
        weight: multiplier in the total loss; 0 removes the objective (its compute is skipped).
    """

    requires_pairs: bool = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}.")
        self.weight = float(weight)
        self._warned_no_pairs = False

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        """Return the unweighted loss, or ``None`` when this batch cannot feed the objective."""
        raise NotImplementedError

    def forward(self, step: PretrainStep) -> torch.Tensor | None:
        if self.requires_pairs and not bool(step.pair_mask().any()):
            if not self._warned_no_pairs:
                log.warning(
                    "%s needs two sequences of one subject per sample, but this batch has none; "
                    "skipping it for such batches (warned once).",
                    type(self).__name__,
                )
                self._warned_no_pairs = True
            return None
        return self.compute(step)
