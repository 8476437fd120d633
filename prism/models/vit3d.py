"""A 3D Vision Transformer encoder for MRI volumes.

Follows timm's ViT (pre-norm blocks, fused ``scaled_dot_product_attention``) and
MAE's fixed sin-cos position embedding, extended to three (possibly anisotropic)
axes. ``forward_features`` returns a dict so several objectives share one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from prism.models.masking import gather_tokens
from prism.models.patches import patchify, token_grid
from prism.models.pos_embed import pos_embed_for_grid, sincos_pos_embed_3d

VIT_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Accept an int or a length-3 sequence of positive ints."""
    triple = (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(triple) != 3 or min(triple) <= 0:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}.")
    return triple  # type: ignore[return-value]


class PatchEmbed3d(nn.Module):
    """Non-overlapping 3D patches -> tokens: ``[N, C, D, H, W]`` -> ``[N, L, embed_dim]``.

    Mathematically a ``Conv3d`` with kernel = stride = patch, computed as patchify + one
    matrix multiply: measured 20-25% faster than the convolution on CPU (forward + backward,
    see benchmarks/RESULTS.md) and a plain GEMM on GPU.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size[0] * patch_size[1] * patch_size[2], embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


class VisionTransformer3d(nn.Module):
    """3D ViT encoder.

    Args:
        preset: one of ``VIT_PRESETS`` (tiny, small, base, large); explicit
            ``embed_dim``/``depth``/``num_heads`` override it.
        img_size: training crop size (D, H, W) or an int; sets the reference grid of
            the position embedding (other sizes get the same token pitch, centred on it).
        patch_size: int or (pd, ph, pw); anisotropic patches are allowed.
        in_chans: input channels per volume (1: one sequence per forward).
        mlp_ratio, qkv_bias, drop_path_rate: as in timm.
        grad_checkpointing: recompute blocks in backward to save memory.
        position_shift: in training mode, each sample's whole position grid is shifted by its own
            random offset drawn uniformly from ``[-position_shift, position_shift]`` tokens per axis
            (the global shift of CAPE, Likhomanenko et al. 2021). Without it an encoder learns where
            its training crop's edges are, and a frozen encoder on another crop size reads worse
            (benchmarks/results/finetune_positions.md). Per sample, so two views of one subject get
            different positions and the cross-sequence invariance term cannot be met by position
            content the views share whatever they show. 0 = off; eval mode never shifts.
    """

    def __init__(
        self,
        preset: str = "base",
        img_size: int | Sequence[int] = 96,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 1,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        position_shift: float = 0.0,
    ):
        super().__init__()
        if preset not in VIT_PRESETS:
            raise ValueError(f"Unknown ViT preset {preset!r}; choose one of {sorted(VIT_PRESETS)} (e.g. model=vit_base).")
        dims = {**VIT_PRESETS[preset]}
        dims.update({k: v for k, v in {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}.items() if v})
        if dims["embed_dim"] % dims["num_heads"]:
            raise ValueError(f"embed_dim {dims['embed_dim']} must be divisible by num_heads {dims['num_heads']}.")
        self.preset = preset
        self.img_size = as_triple(img_size, "img_size")
        self.patch_size = as_triple(patch_size, "patch_size")
        self.grid = token_grid(self.img_size, self.patch_size)
        self.in_chans = in_chans
        self.embed_dim, self.depth, self.num_heads = dims["embed_dim"], dims["depth"], dims["num_heads"]
        self.grad_checkpointing = grad_checkpointing
        if position_shift < 0:
            raise ValueError(f"position_shift must be >= 0 tokens, got {position_shift}.")
        self.position_shift = float(position_shift)

        self.patch_embed = PatchEmbed3d(self.patch_size, in_chans, self.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(self.grid, self.embed_dim), persistent=False)
        rates = torch.linspace(0, drop_path_rate, self.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, self.num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate) for rate in rates
        )
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this encoder (stored in exported checkpoints)."""
        return {
            "preset": self.preset,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
        }

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm-style layer groups, for layer-wise learning-rate decay."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def grid_for(self, spatial: Sequence[int]) -> tuple[int, int, int]:
        return token_grid(tuple(spatial), self.patch_size)  # type: ignore[arg-type]

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Position table ``[L, C]`` for a token grid: the training table, or for another grid the
        sin-cos table at the training token pitch, centred on the training grid (see ``sincos_pos_embed_3d``)."""
        return pos_embed_for_grid(self.pos_embed, self.grid, grid)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patch-embed and add positions: ``[N, C, D, H, W]`` -> ``[N, L, E]``, grid."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"Expected input [N, {self.in_chans}, D, H, W], got shape {tuple(x.shape)}.")
        grid = self.grid_for(x.shape[2:])
        tokens = self.patch_embed(x)
        if self.training and self.position_shift > 0:
            shift = (torch.rand(tokens.shape[0], 3, device=tokens.device) * 2 - 1) * self.position_shift
            table = sincos_pos_embed_3d(grid, self.embed_dim, reference_grid=self.grid, shift=shift)  # [N, L, E], on tokens' device
        else:
            table = self.pos_embed_for(grid)
        return tokens + table.to(tokens.dtype), grid

    def forward_features(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        return_layers: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Encode a batch of volumes.

        Args:
            x: ``[N, in_chans, D, H, W]``, each spatial size divisible by the patch size.
            ids_keep: optional ``[N, K]`` indices of the tokens to keep (masked encoding).
            return_layers: block indices (0-based) whose normed outputs are returned too.

        Returns:
            dict with ``cls`` ``[N, E]``, ``patch`` ``[N, K or L, E]`` (final norm applied),
            ``grid`` (token grid), ``intermediate`` (list of ``[N, K or L, E]``).
        """
        tokens, grid = self.embed(x)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        intermediate = []
        for index, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in return_layers:
                intermediate.append(self.norm(tokens)[:, 1:])
        tokens = self.norm(tokens)
        return {"cls": tokens[:, 0], "patch": tokens[:, 1:], "grid": grid, "intermediate": intermediate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, E]`` (the class token)."""
        return self.forward_features(x)["cls"]
