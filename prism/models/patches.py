"""Conversions between 3D volumes and flattened patch sequences (token order = Conv3d order)."""

from __future__ import annotations

import torch


def token_grid(img_size: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Token grid of a volume; raises ``ValueError`` naming the axis when a size is not divisible."""
    for axis, (size, patch) in enumerate(zip(img_size, patch_size)):
        if size % patch:
            raise ValueError(
                f"Input size {tuple(img_size)} is not divisible by patch size {tuple(patch_size)} on axis {axis} "
                f"({size} % {patch} = {size % patch}). Choose a crop size that is a multiple of the patch size, "
                f"e.g. data.crop_size=[{','.join(str(max(p, s // p * p)) for s, p in zip(img_size, patch_size))}]."
            )
    return tuple(s // p for s, p in zip(img_size, patch_size))  # type: ignore[return-value]


def patchify(volumes: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """``[N, C, D, H, W]`` -> ``[N, L, pd*ph*pw*C]``."""
    n, c, d, h, w = volumes.shape
    gd, gh, gw = token_grid((d, h, w), patch_size)
    pd, ph, pw = patch_size
    x = volumes.reshape(n, c, gd, pd, gh, ph, gw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(n, gd * gh * gw, pd * ph * pw * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int], channels: int = 1) -> torch.Tensor:
    """``[N, L, pd*ph*pw*C]`` -> ``[N, C, D, H, W]`` (inverse of :func:`patchify`)."""
    n = patches.shape[0]
    gd, gh, gw = grid
    pd, ph, pw = patch_size
    x = patches.reshape(n, gd, gh, gw, pd, ph, pw, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(n, channels, gd * pd, gh * ph, gw * pw)
