"""Closed-form linear probes (ridge), deterministic and fast enough to run inside training."""

from __future__ import annotations

import torch


def ridge_fit(train_x: torch.Tensor, train_y: torch.Tensor, l2: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression with a bias on per-channel standardised ``train_x`` ``[M, F]`` -> ``[M, T]``.

    Returns ``(mean, std, weights)``: predict with :func:`ridge_predict`. Computed in float64.
    """
    train_x = train_x.double()
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    design = torch.cat([(train_x - mean) / std, torch.ones_like(train_x[:, :1])], 1)
    gram = design.T @ design + l2 * torch.eye(design.shape[1], dtype=design.dtype, device=design.device)
    return mean, std, torch.linalg.solve(gram, design.T @ train_y.double())


def ridge_predict(mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Predictions of a :func:`ridge_fit` model for ``x`` ``[M, F]`` (differentiable in ``x``)."""
    x = (x.to(weights.dtype) - mean) / std
    return x @ weights[:-1] + weights[-1]


def ridge_fit_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, l2: float = 1.0) -> torch.Tensor:
    """Ridge regression ``[M, F] -> [M, T]`` with a bias; returns predictions for ``test_x``."""
    return ridge_predict(*ridge_fit(train_x, train_y, l2), test_x)


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2: float = 1.0) -> float:
    """Accuracy of a one-vs-rest ridge classifier (targets one-hot)."""
    one_hot = torch.nn.functional.one_hot(train_y, num_classes).double()
    predicted = ridge_fit_predict(train_x, one_hot, test_x, l2).argmax(1)
    return float((predicted == test_y).double().mean())


def majority_rate(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """Accuracy of always guessing the training split's most frequent class (the chance level)."""
    return float((test_y == torch.mode(train_y).values).double().mean())
