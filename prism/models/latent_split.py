"""Project encoder tokens into an anatomy part and a sequence part.

The anatomy part keeps one vector per token (what is imaged, where); the sequence
part is pooled into one code per volume (how it was imaged). Masked reconstruction
decodes from both, the sequence objectives read the code, and the invariance and
adversarial objectives read the anatomy tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentSplit(nn.Module):
    """``[N, K, E]`` tokens -> anatomy ``[N, K, anatomy_dim]`` and sequence code ``[N, sequence_dim]``.

    Args:
        embed_dim: encoder width E.
        anatomy_dim: width of the anatomy tokens.
        sequence_dim: width of the pooled sequence code.
    """

    def __init__(self, embed_dim: int, anatomy_dim: int = 192, sequence_dim: int = 64):
        super().__init__()
        if anatomy_dim <= 0 or sequence_dim <= 0:
            raise ValueError(f"anatomy_dim and sequence_dim must be positive, got {anatomy_dim} and {sequence_dim}.")
        self.anatomy_dim, self.sequence_dim = anatomy_dim, sequence_dim
        self.anatomy = nn.Linear(embed_dim, anatomy_dim)
        self.sequence = nn.Sequential(nn.Linear(embed_dim, sequence_dim), nn.GELU(), nn.Linear(sequence_dim, sequence_dim))

    def forward(self, patch_tokens: torch.Tensor, cls_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(anatomy [N, K, A], sequence_code [N, S])``; the code pools the class and patch tokens."""
        pooled = 0.5 * (cls_token + patch_tokens.mean(dim=1))
        return self.anatomy(patch_tokens), self.sequence(pooled)
