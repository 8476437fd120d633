"""Per-channel standardisation with running statistics (no affine, no gradient through the statistics).

The sequence code is read from pooled encoder tokens, whose differences between volumes are small next
to what every volume shares (position embeddings, the final norm's scale): on a 900-step CPU run the
pooled vector's spread across volumes was a few percent of its magnitude, the sequence head's classifier
saw an almost constant input and never left the class prior. Standardising each channel by its running
mean and standard deviation over recent volumes hands the head and the decoder the differences between
volumes at unit scale. Unlike batch norm it behaves the same for any batch size (one volume included)
and in train and eval mode; only the statistics' update is train-only.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningStandardise(nn.Module):
    """``x [N, C] -> (x - running_mean) / running_std``; the statistics follow the training batches.

    Args:
        channels: C.
        momentum: weight of the old statistics per update (the first updates average uniformly, so
            the initial zeros / ones are forgotten after one batch).
        eps: added to the variance.
    """

    def __init__(self, channels: int, momentum: float = 0.99, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1:
            with torch.no_grad():
                batch = x.detach().float()
                # a tensor, not a Python float: no device-to-host sync in the training step
                keep = (self.updates / (self.updates + 1)).clamp(max=self.momentum)
                self.running_mean.mul_(keep).add_((1 - keep) * batch.mean(0))
                self.running_var.mul_(keep).add_((1 - keep) * batch.var(0))
                self.updates += 1
        scale = torch.rsqrt(self.running_var + self.eps)
        return ((x.float() - self.running_mean) * scale).to(x.dtype)
