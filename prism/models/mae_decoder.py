"""Lightweight MAE decoder conditioned on a sequence code.

Input: anatomy tokens of the kept patches plus one sequence code per volume. Decoding
anatomy(A) with the code of sequence B renders A's anatomy with B's contrast (the swap
objective). How the code enters (``sequence_conditioning``):

* ``token``: as a leading token every position can attend to (in-context conditioning);
* ``add``: its embedding is added to every position as well, so every patch's reconstruction
  error reaches the code directly (the way class or segment embeddings condition a transformer).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import Block

from prism.models.masking import gather_tokens
from prism.models.pos_embed import pos_embed_for_grid, sincos_pos_embed_3d


class MAEDecoder3d(nn.Module):
    """Predict every patch's voxels from kept anatomy tokens and a sequence code.

    Args:
        anatomy_dim: width of the incoming anatomy tokens.
        sequence_dim: width of the sequence code.
        grid: reference token grid (position table; other grids keep its token pitch).
        patch_voxels: voxels per patch times channels (prediction width).
        embed_dim, depth, num_heads, mlp_ratio: decoder transformer size (MAE: 512, 8, 16).
        sequence_conditioning: ``token`` or ``add`` (see the module docstring).
    """

    CONDITIONINGS = ("token", "add")

    def __init__(
        self,
        anatomy_dim: int,
        sequence_dim: int,
        grid: tuple[int, int, int],
        patch_voxels: int,
        embed_dim: int = 256,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        sequence_conditioning: str = "token",
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"decoder embed_dim {embed_dim} must be divisible by decoder num_heads {num_heads}.")
        if sequence_conditioning not in self.CONDITIONINGS:
            raise ValueError(
                f"sequence_conditioning={sequence_conditioning!r} is not one of {self.CONDITIONINGS} (model.sequence_conditioning)."
            )
        self.sequence_conditioning = sequence_conditioning
        self.grid = tuple(grid)
        self.embed = nn.Linear(anatomy_dim, embed_dim)
        self.sequence_embed = nn.Linear(sequence_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(self.grid, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pred = nn.Linear(embed_dim, patch_voxels)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}

    def forward(
        self,
        anatomy: torch.Tensor,
        sequence_code: torch.Tensor,
        ids_restore: torch.Tensor | None,
        grid: tuple[int, int, int],
    ) -> torch.Tensor:
        """Decode.

        Args:
            anatomy: ``[N, K, anatomy_dim]`` tokens of the kept patches (in kept order).
            sequence_code: ``[N, sequence_dim]``.
            ids_restore: ``[N, L]`` from masking, or ``None`` when nothing was masked.
            grid: token grid of the input volume.

        Returns:
            ``[N, L, patch_voxels]`` predictions in the original token order.
        """
        tokens = self.embed(anatomy)
        if ids_restore is not None:
            n, length = ids_restore.shape
            fill = self.mask_token.to(tokens.dtype).expand(n, length - tokens.shape[1], -1)
            tokens = gather_tokens(torch.cat([tokens, fill], dim=1), ids_restore)
        tokens = tokens + pos_embed_for_grid(self.pos_embed, self.grid, grid).to(tokens.dtype)
        code = self.sequence_embed(sequence_code).unsqueeze(1).to(tokens.dtype)
        if self.sequence_conditioning == "add":
            tokens = tokens + code
        tokens = torch.cat([code, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.pred(self.norm(tokens)[:, 1:])
