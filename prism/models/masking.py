"""MAE-style per-sample random masking, entirely on the tensors' device.

Convention (as in MAE): ``mask`` is 0 for kept tokens and 1 for removed ones, in the
original token order; ``ids_restore`` un-shuffles ``[kept, removed]`` back to that order.
"""

from __future__ import annotations

import torch


def random_masking(
    num_samples: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw an independent random mask per sample.

    Args:
        num_samples: N.
        num_tokens: L, tokens per sample.
        mask_ratio: fraction of tokens removed, in [0, 1).
        device: where the indices live (no CPU round trip on GPU).
        generator: optional generator on ``device`` for reproducible masks.

    Returns:
        ``ids_keep`` [N, L_keep], ``mask`` [N, L] (1 = removed), ``ids_restore`` [N, L].
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    len_keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(num_samples, num_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(num_samples, num_tokens, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens ``[N, L, C]`` at indices ``ids`` ``[N, K]`` -> ``[N, K, C]``."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
