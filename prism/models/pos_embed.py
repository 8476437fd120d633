"""Fixed 3D sine-cosine position embeddings (MAE-style, extended to three axes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_pos_embed_3d(
    grid: tuple[int, int, int],
    dim: int,
    temperature: float = 10000.0,
    reference_grid: tuple[int, int, int] | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return a ``[D*H*W, dim]`` table of 3D sin-cos embeddings for a token grid.

    Each axis gets ``2 * (dim // 6)`` channels (half sine, half cosine); any remainder
    channels (when ``dim`` is not divisible by 6) are zero. Token order is D-major,
    matching ``Conv3d(...).flatten(2)``.

    ``reference_grid`` (the grid the encoder was trained on) places ``grid`` centred in the
    reference grid's coordinates at the SAME token pitch: a smaller input gets the central
    sub-window of the training table, a larger one extends it on both sides. With unchanged patch
    size and voxel spacing this is the physically right table: neighbouring tokens stay one
    position apart, as in training. (Resampling the training table to the new grid instead, as is
    done for learned tables, would tell the encoder that neighbours of a 32^3 crop of a 64^3-trained
    encoder are two positions apart; measured on frozen tokens, that cost a third of their tissue
    information, see benchmarks/results/finetune_positions.md.)

    ``shift``: ``[3]`` (fractional) token offsets added to every position, or ``[N, 3]``, one offset
    per sample, which returns ``[N, D*H*W, dim]`` (training-time position jitter,
    ``VisionTransformer3d(position_shift=...)``).
    """
    per_axis = dim // 6  # frequencies per axis
    if per_axis == 0:
        raise ValueError(f"Embedding width {dim} is too small for a 3D sin-cos position embedding (need >= 6).")
    device = shift.device if shift is not None else None  # a per-step shifted table is built where it is used
    omega = 1.0 / temperature ** (torch.arange(per_axis, dtype=torch.float64, device=device) / per_axis)
    reference = grid if reference_grid is None else reference_grid
    axes = [torch.arange(n, dtype=torch.float64, device=device) + (ref - n) / 2 for n, ref in zip(grid, reference)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # [L, 3]
    if shift is not None:
        coords = coords + shift.detach().to(torch.float64).unsqueeze(-2)  # [L, 3] or [N, L, 3]
    parts = []
    for axis in range(3):
        angles = coords[..., axis, None] * omega
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=-1)
    if table.shape[-1] < dim:
        table = F.pad(table, (0, dim - table.shape[-1]))
    return table.float()


def pos_embed_for_grid(table: torch.Tensor, reference_grid: tuple[int, int, int], grid: tuple[int, int, int]) -> torch.Tensor:
    """``table`` (the sin-cos table of ``reference_grid``) for ``grid``: itself, or the table at the same token pitch."""
    if tuple(grid) == tuple(reference_grid):
        return table
    return sincos_pos_embed_3d(tuple(grid), table.shape[1], reference_grid=tuple(reference_grid)).to(table.device)
