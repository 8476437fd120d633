"""Closed-form linear probes (ridge), deterministic and fast enough to run inside training."""

from __future__ import annotations

import torch


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def ridge_fit_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, l2: float = 1.0) -> torch.Tensor:
    """Ridge regression ``[M, F] -> [M, T]`` with a bias; returns predictions for ``test_x``."""
    train_x, test_x = _standardise(train_x.double(), test_x.double())
    ones = torch.ones(train_x.shape[0], 1, dtype=train_x.dtype)
    design = torch.cat([train_x, ones], 1)
    gram = design.T @ design + l2 * torch.eye(design.shape[1], dtype=design.dtype)
    weights = torch.linalg.solve(gram, design.T @ train_y.double())
    return torch.cat([test_x, torch.ones(test_x.shape[0], 1, dtype=test_x.dtype)], 1) @ weights


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2: float = 1.0) -> float:
    """Accuracy of a one-vs-rest ridge classifier (targets one-hot)."""
    one_hot = torch.nn.functional.one_hot(train_y, num_classes).double()
    predicted = ridge_fit_predict(train_x, one_hot, test_x, l2).argmax(1)
    return float((predicted == test_y).double().mean())


def majority_rate(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """Accuracy of always guessing the training split's most frequent class (the chance level)."""
    return float((test_y == torch.mode(train_y).values).double().mean())
