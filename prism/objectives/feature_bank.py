"""A ring buffer of recent detached feature vectors (and an integer label each) for objectives that
need more samples than one 3D batch holds (a refitted probe, negatives from other subjects).

The buffers (vectors, labels, the next row to write) are part of the module's state dict, so a
resumed run continues with the bank it was saved with and trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureBank(nn.Module):
    """The last ``size`` vectors of width ``dim`` added, with their labels (-1 marks an empty row)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"FeatureBank: size and dim must be >= 1, got size={size}, dim={dim}.")
        self.register_buffer("vectors", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("next_row", torch.zeros((), dtype=torch.long))

    def add(self, vectors: torch.Tensor, labels: torch.Tensor) -> None:
        """Store detached ``vectors`` ``[M, dim]`` with ``labels`` ``[M]`` (>= 0), overwriting the oldest."""
        if len(labels) == 0:
            return
        size = self.vectors.shape[0]
        vectors, labels = vectors[-size:], labels[-size:]
        rows = (torch.arange(len(labels), device=self.vectors.device) + self.next_row) % size
        self.vectors[rows] = vectors.detach().to(self.vectors.dtype)
        self.labels[rows] = labels.to(self.labels.device)
        self.next_row.copy_((self.next_row + len(labels)) % size)

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored vectors and labels (rows in no particular order)."""
        keep = self.labels >= 0
        return self.vectors[keep], self.labels[keep]

    def __len__(self) -> int:
        return int((self.labels >= 0).sum())
