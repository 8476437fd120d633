"""Optimizer parameter groups, learning-rate scaling and the warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def param_groups_weight_decay(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_weight_decay: set[str] = frozenset()
) -> list[dict]:
    """Two groups: decayed weights, and biases / norms / 1-D params / names in ``no_weight_decay`` without decay."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_learning_rate(base_lr: float, global_batch: int, reference_batch: int | None) -> float:
    """Linear scaling rule (Goyal et al.; MAE): ``lr = base_lr * global_batch / reference_batch``.

    ``global_batch`` = per-device batch x devices x nodes x gradient accumulation, so the
    same experiment trains identically on 1 GPU with accumulation and on N GPUs without.
    ``reference_batch=None`` disables scaling (``base_lr`` is used as is).
    """
    if reference_batch is None:
        return base_lr
    return base_lr * global_batch / reference_batch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base rate, then cosine decay to ``min_lr_ratio`` x base at ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive for the cosine schedule, got {total_steps} (set trainer.max_steps).")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
