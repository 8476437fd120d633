"""Classification and regression on one or several sequences per subject.

Each present sequence (view) of a subject is encoded by the shared backbone into one
pooled vector; :class:`AttentionPooling` weighs the present views (a learned score per
view, softmax over the present ones only) into one subject vector; a linear head maps it
to ``num_outputs``. Absent views take no part, so a subject with one sequence and a
subject with four go through the same network; ``view_dropout`` hides random present views
during training so the head does not come to rely on any one sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism.finetune.backbone import Backbone
from prism.finetune.task_spec import TaskSpec

POOLINGS = ("attention", "mean")


class AttentionPooling(nn.Module):
    """Masked attention pooling over views: ``[B, V, F]`` + present ``[B, V]`` -> ``[B, F]``.

    Gated attention (Ilse et al., 2018): ``score = w . (tanh(U x) * sigmoid(G x))``; the
    softmax runs over present views only. ``mode="mean"`` averages the present views.
    """

    def __init__(self, dim: int, hidden_dim: int = 64, mode: str = "attention"):
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling={mode!r}; use one of {list(POOLINGS)} (model.head.pooling).")
        self.mode = mode
        if mode == "attention":
            self.norm = nn.LayerNorm(dim)
            self.value = nn.Linear(dim, hidden_dim)
            self.gate = nn.Linear(dim, hidden_dim)
            self.score = nn.Linear(hidden_dim, 1)

    def weights(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Pooling weights ``[B, V]``: zero on absent views, summing to one per subject."""
        if self.mode == "mean":
            scores = torch.zeros(views.shape[:2], device=views.device, dtype=views.dtype)
        else:
            x = self.norm(views)
            scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        scores = scores.masked_fill(~present, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if not bool(present.any(dim=1).all()):
            raise ValueError("AttentionPooling: a subject has no present view; every subject needs at least one sequence.")
        weights = self.weights(views, present)
        return torch.einsum("bv,bvf->bf", weights, views.masked_fill(~present[..., None], 0.0))


def drop_views(present: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide each present view with ``probability``, always keeping at least one per subject."""
    if probability <= 0:
        return present
    keep = torch.rand(present.shape, device=present.device, generator=generator) >= probability
    dropped = present & keep
    empty = ~dropped.any(dim=1)
    if empty.any():  # give such subjects back one random present view
        scores = torch.rand(present.shape, device=present.device, generator=generator).masked_fill(~present, -1.0)
        first = torch.zeros_like(present).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        dropped = torch.where(empty[:, None], first, dropped)
    return dropped


class PredictionNetwork(nn.Module):
    """Backbone + view pooling + linear head, for classification and regression.

    Args:
        backbone: the (pretrained) :class:`Backbone`.
        task: what to predict (``classification`` or ``regression``).
        pooling: ``attention`` or ``mean`` over the present views.
        hidden_dim: width of the attention scorer.
        dropout: dropout before the linear head.
        view_dropout: probability of hiding a present view during training.
    """

    def __init__(
        self,
        backbone: Backbone,
        task: TaskSpec,
        pooling: str = "attention",
        hidden_dim: int = 64,
        dropout: float = 0.0,
        view_dropout: float = 0.0,
    ):
        super().__init__()
        if task.kind == "segmentation":
            raise ValueError(f"Task {task.name!r} is a segmentation task; use SegmentationNetwork for it.")
        if not 0.0 <= view_dropout < 1.0:
            raise ValueError(f"view_dropout={view_dropout} must be in [0, 1) (model.head.view_dropout).")
        self.backbone = backbone
        self.task = task
        self.view_dropout = view_dropout
        self.pool = AttentionPooling(backbone.feature_dim, hidden_dim, pooling)
        self.head = nn.Sequential(nn.LayerNorm(backbone.feature_dim), nn.Dropout(dropout), nn.Linear(backbone.feature_dim, task.num_outputs))
        nn.init.trunc_normal_(self.head[-1].weight, std=0.02)
        nn.init.zeros_(self.head[-1].bias)

    def subject_features(self, image: torch.Tensor, view_present: torch.Tensor | None = None) -> dict[str, Any]:
        """Per-view pooled features ``[B, V, F]``, the views used ``[B, V]`` and the subject vector ``[B, F]``."""
        present = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device) if view_present is None else view_present.bool()
        if self.training:
            present = drop_views(present, self.view_dropout)
        features, present = self.backbone.encode_views(image, present)
        views = features["pooled"].new_zeros(*present.shape, features["pooled"].shape[-1])
        views[present] = features["pooled"]
        return {"views": views, "present": present, "subject": self.pool(views, present)}

    def forward(self, image: torch.Tensor, view_present: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` ``[B, V, D, H, W]`` -> outputs ``[B, num_outputs]`` (logits or standardised values)."""
        return self.head(self.subject_features(image, view_present)["subject"])
