"""Fixed 3D sine-cosine position embeddings (MAE-style, extended to three axes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Return a ``[D*H*W, dim]`` table of 3D sin-cos embeddings for a token grid.

    Each axis gets ``2 * (dim // 6)`` channels (half sine, half cosine); any remainder
    channels (when ``dim`` is not divisible by 6) are zero. Token order is D-major,
    matching ``Conv3d(...).flatten(2)``.
    """
    per_axis = dim // 6  # frequencies per axis
    if per_axis == 0:
        raise ValueError(f"Embedding width {dim} is too small for a 3D sin-cos position embedding (need >= 6).")
    omega = 1.0 / temperature ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    parts = []
    for axis_coords in coords:
        angles = axis_coords.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)
    if table.shape[1] < dim:
        table = F.pad(table, (0, dim - table.shape[1]))
    return table.float()


def resize_pos_embed_3d(table: torch.Tensor, old_grid: tuple[int, int, int], new_grid: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly interpolate a ``[L, C]`` position table from ``old_grid`` to ``new_grid``."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    channels = table.shape[-1]
    volume = table.reshape(1, *old_grid, channels).permute(0, 4, 1, 2, 3)
    volume = F.interpolate(volume, size=tuple(new_grid), mode="trilinear", align_corners=False)
    return volume.permute(0, 2, 3, 4, 1).reshape(-1, channels)
