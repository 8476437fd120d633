"""Pretraining objectives: one loss per module, each an ``Objective`` with a weight."""

from prism.objectives.base import Objective, PretrainStep

__all__ = ["Objective", "PretrainStep"]
