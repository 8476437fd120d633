"""Sequence head on the sequence code: classify the sequence type, regress acquisition parameters.

Unknown parameters (``acq_present`` False) contribute no loss and are never imputed:
the regression loss is a mean over present entries only. Parameters are regressed in a
normalised space: log seconds for TR/TE/TI, degrees / 90 for the flip angle, tesla / 3
for the field strength.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism.objectives.base import Objective, PretrainStep
from prism.sequences import ACQUISITION_PARAMETERS, NUM_ACQUISITION_PARAMETERS, NUM_SEQUENCE_TYPES

_LOG_SCALED = torch.tensor([name.endswith("Time") for name in ACQUISITION_PARAMETERS])
_SCALE = torch.tensor([{"FlipAngle": 90.0, "MagneticFieldStrength": 3.0}.get(n, 1.0) for n in ACQUISITION_PARAMETERS])


def normalise_acquisition(params: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Map ``[..., P]`` parameters (s, deg, T) to the regression space; absent entries become 0 (never read)."""
    log_scaled = _LOG_SCALED.to(params.device)
    safe = torch.where(present, params, torch.ones_like(params)).clamp_min(1e-6)
    out = torch.where(log_scaled, torch.log(safe), safe / _SCALE.to(params.device))
    return torch.where(present, out, torch.zeros_like(out))


def denormalise_acquisition(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise_acquisition` for predicted values."""
    log_scaled = _LOG_SCALED.to(values.device)
    return torch.where(log_scaled, torch.exp(values), values * _SCALE.to(values.device))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Mean of ``values`` where ``mask``; ``None`` when nothing is present."""
    if not bool(mask.any()):
        return None
    return values[mask].mean()


class SequenceHead(Objective):
    """Cross-entropy on sequence type + smooth-L1 on present acquisition parameters.

    Args:
        weight: loss weight.
        sequence_dim: width of the sequence code.
        parameter_weight: weight of the regression term relative to classification.
    """

    def __init__(self, weight: float = 1.0, sequence_dim: int = 64, parameter_weight: float = 1.0):
        super().__init__(weight)
        self.parameter_weight = parameter_weight
        self.classifier = nn.Linear(sequence_dim, NUM_SEQUENCE_TYPES)
        self.regressor = nn.Sequential(nn.Linear(sequence_dim, sequence_dim), nn.GELU(), nn.Linear(sequence_dim, NUM_ACQUISITION_PARAMETERS))

    def predict(self, sequence_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, T]`` and normalised parameter predictions ``[N, P]``."""
        return self.classifier(sequence_code), self.regressor(sequence_code)

    def losses(self, sequence_code, sequence_id, acq_params, acq_present, view_present) -> dict[str, torch.Tensor]:
        """The two terms separately (each only where targets exist)."""
        logits, predicted = self.predict(sequence_code.float())
        out: dict[str, torch.Tensor] = {}
        known = view_present & (sequence_id >= 0)
        if bool(known.any()):
            out["type"] = F.cross_entropy(logits[known], sequence_id[known])
        present = acq_present & view_present.unsqueeze(-1)
        target = normalise_acquisition(acq_params.float(), present)
        regression = masked_mean(F.smooth_l1_loss(predicted, target, reduction="none"), present)
        if regression is not None:
            out["parameters"] = regression
        return out

    def compute(self, step: PretrainStep) -> torch.Tensor | None:
        terms = self.losses(step.features["sequence_code"], step.sequence_id, step.acq_params, step.acq_present, step.view_present)
        if not terms:
            return None
        return terms.get("type", 0.0) + self.parameter_weight * terms.get("parameters", 0.0)
