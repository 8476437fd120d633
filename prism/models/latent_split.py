"""Project encoder tokens into an anatomy part and a sequence part.

The anatomy part keeps one vector per token (what is imaged, where); the sequence
part is pooled into one code per volume (how it was imaged). Masked reconstruction
decodes from both, the sequence objectives read the code, and the invariance and
adversarial objectives read the anatomy tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from prism.models.running_standardise import RunningStandardise
from prism.models.sequence_eraser import SequenceEraser
from prism.sequences import NUM_SEQUENCE_TYPES


class LatentSplit(nn.Module):
    """``[N, K, E]`` tokens -> anatomy ``[N, K, anatomy_dim]`` and sequence code ``[N, sequence_dim]``.

    Args:
        embed_dim: encoder width E.
        anatomy_dim: width of the anatomy tokens.
        sequence_dim: width of the pooled sequence code.
        sequence_pool: what the code is read from: ``cls`` (the class token, which attends to every
            patch, so the patch tokens the anatomy part projects need not carry the sequence) or
            ``cls_and_patches`` (the mean of the class token and the average patch token).
        standardise_pooled: standardise the pooled vector per channel by running statistics before the
            sequence projection (:class:`RunningStandardise`; without it the code barely varied between
            volumes and the sequence head stayed at the class prior). False keeps checkpoints written
            before it loadable.
        erase_sequence: project anatomy tokens off the directions sequences shift them along
            (:class:`SequenceEraser`; its statistics are updated by the pretraining module). False keeps
            checkpoints written before it loadable.
        sequence_offset: ``off``, or subtract a linear function of the volume's sequence code from every
            anatomy token (``anatomy = W x - U code``, ``U`` starts at zero): a direct path for the
            objectives to cancel the per-sequence offset a linear probe reads in pooled anatomy.
            ``detached`` reads the code without gradient (the code keeps the meaning the sequence
            objectives give it); ``attached`` lets the anatomy objectives shape the code too (measured:
            the code then served the cancellation and lost the sequence, separation.md 2026-12-08).
    """

    POOLS = ("cls", "cls_and_patches")
    SEQUENCE_OFFSETS = ("off", "detached", "attached")

    def __init__(self, embed_dim: int, anatomy_dim: int = 192, sequence_dim: int = 64, sequence_pool: str = "cls_and_patches",
                 standardise_pooled: bool = False, erase_sequence: bool = False, sequence_offset: str = "off"):
        super().__init__()
        if anatomy_dim <= 0 or sequence_dim <= 0:
            raise ValueError(f"anatomy_dim and sequence_dim must be positive, got {anatomy_dim} and {sequence_dim}.")
        if sequence_pool not in self.POOLS:
            raise ValueError(f"sequence_pool={sequence_pool!r} is not one of {self.POOLS} (model.sequence_pool).")
        if sequence_offset not in self.SEQUENCE_OFFSETS:
            raise ValueError(f"sequence_offset={sequence_offset!r} is not one of {self.SEQUENCE_OFFSETS} (model.sequence_offset).")
        self.anatomy_dim, self.sequence_dim, self.sequence_pool = anatomy_dim, sequence_dim, sequence_pool
        self.anatomy = nn.Linear(embed_dim, anatomy_dim)
        self.pooled_norm = RunningStandardise(embed_dim) if standardise_pooled else nn.Identity()
        self.eraser = SequenceEraser(anatomy_dim, NUM_SEQUENCE_TYPES) if erase_sequence else None
        self.sequence = nn.Sequential(nn.Linear(embed_dim, sequence_dim), nn.GELU(), nn.Linear(sequence_dim, sequence_dim))
        self.offset_mode = sequence_offset
        self.sequence_offset = nn.Linear(sequence_dim, anatomy_dim, bias=False) if sequence_offset != "off" else None
        if self.sequence_offset is not None:
            nn.init.zeros_(self.sequence_offset.weight)

    def forward(self, patch_tokens: torch.Tensor, cls_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(anatomy [N, K, A], sequence_code [N, S])``."""
        pooled = cls_token if self.sequence_pool == "cls" else 0.5 * (cls_token + patch_tokens.mean(dim=1))
        anatomy = self.anatomy(patch_tokens)
        code = self.sequence(self.pooled_norm(pooled))
        if self.sequence_offset is not None:
            offset_input = code.detach() if self.offset_mode == "detached" else code
            anatomy = anatomy - self.sequence_offset(offset_input).unsqueeze(1)
        if self.eraser is not None:
            anatomy = self.eraser(anatomy)
        return anatomy, code
