"""Task metrics, accumulated over a whole evaluation set and written to ``metrics.json``.

* segmentation: Dice and HD95 (MONAI) per foreground class and their means; HD95 in mm when
  the voxel spacing is known (in voxels otherwise). A class absent from a subject's truth is
  left out of that subject's Dice (MONAI ``ignore_empty``); HD95 is averaged over the
  subjects where it is finite (both masks non-empty).
* classification: accuracy, balanced accuracy (mean per-class recall) and macro AUROC
  over the classes present in the set (torchmetrics).
* regression: MAE and R^2 per target and averaged, in real units (the datamodule's
  standardisation undone with ``TaskSpec.target_mean`` / ``target_std``) (torchmetrics).

One accumulator per evaluation set; :func:`write_metrics` writes
``{set name: {metric: value}}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc
from torchmetrics.functional.regression import mean_absolute_error, r2_score

from prism.finetune.task_spec import TaskSpec

METRICS_FILE = "metrics.json"


class TaskMetrics:
    """Accumulate predictions of one evaluation set and compute the task's metrics.

    Args:
        task: the task (its kind picks the metrics; names label per-class / per-target values).
        spacing_mm: voxel size for HD95 in mm (segmentation); None reports voxels.
    """

    def __init__(self, task: TaskSpec, spacing_mm: float | None = None):
        self.task = task
        self.spacing_mm = spacing_mm
        self.reset()

    def reset(self) -> None:
        self.dice: list[torch.Tensor] = []
        self.hd95: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits ``[B, C, D, H, W]`` + labels ``[B, D, H, W]``, logits ``[B, C]`` + classes ``[B]``,
        or standardised values ``[B, K]`` + targets ``[B, K]``."""
        outputs, target = outputs.detach().float().cpu(), target.detach().cpu()
        if self.task.kind == "segmentation":
            classes = self.task.num_outputs
            predicted = F.one_hot(outputs.argmax(dim=1), classes).movedim(-1, 1)
            truth = F.one_hot(target.long().clamp(0, classes - 1), classes).movedim(-1, 1)
            self.dice.append(compute_dice(predicted, truth, include_background=False, ignore_empty=True))
            spacing = self.spacing_mm if self.spacing_mm is not None else 1.0
            self.hd95.append(compute_hausdorff_distance(predicted, truth, include_background=False, percentile=95, spacing=spacing))
        else:
            self.outputs.append(outputs)
            self.targets.append(target)

    def gather(self) -> None:
        """Under DDP, collect every rank's accumulated values on every rank (each saw a shard of the set)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.dice, self.hd95, self.outputs, self.targets))
        self.dice, self.hd95, self.outputs, self.targets = ([t for part in gathered for t in part[i]] for i in range(4))

    def compute(self) -> dict[str, float]:
        """Metric name -> value for everything seen since the last reset (call :meth:`gather` first under DDP)."""
        if self.task.kind == "segmentation":
            return self._segmentation()
        if not self.outputs:
            return {}
        outputs, targets = torch.cat(self.outputs), torch.cat(self.targets)
        return self._classification(outputs, targets.long()) if self.task.kind == "classification" else self._regression(outputs, targets.float())

    def _segmentation(self) -> dict[str, float]:
        if not self.dice:
            return {}
        dice, hd95 = torch.cat(self.dice), torch.cat(self.hd95)
        hd95 = torch.where(torch.isfinite(hd95), hd95, torch.full_like(hd95, float("nan")))
        names = self.task.output_names[1:]
        result = {"dice": _nanmean(dice), "hd95": _nanmean(hd95)}
        for index, name in enumerate(names):
            result[f"dice_{name}"] = _nanmean(dice[:, index])
            result[f"hd95_{name}"] = _nanmean(hd95[:, index])
        return result

    def _classification(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        classes = self.task.num_outputs
        probabilities = logits.softmax(dim=1)
        result = {
            "accuracy": float(multiclass_accuracy(logits, targets, classes, average="micro")),
            # macro recall over the classes that occur in this set = balanced accuracy
            "balanced_accuracy": _nanmean(_present_only(multiclass_accuracy(logits, targets, classes, average="none"), targets, classes)),
        }
        if targets.unique().numel() < 2:
            result["auroc"] = float("nan")  # undefined with one class in the set
        elif classes == 2:
            result["auroc"] = float(binary_auroc(probabilities[:, 1], targets))
        else:
            per_class = multiclass_auroc(probabilities, targets, classes, average="none")
            result["auroc"] = _nanmean(_present_only(per_class, targets, classes))
        return result

    def _regression(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        predicted, truth = self.task.to_real_units(outputs), self.task.to_real_units(targets)
        result: dict[str, float] = {"mae": float(mean_absolute_error(predicted, truth))}
        if truth.shape[0] >= 2:
            result["r2"] = float(r2_score(predicted, truth, multioutput="uniform_average"))
        for index, name in enumerate(self.task.output_names):
            result[f"mae_{name}"] = float(mean_absolute_error(predicted[:, index], truth[:, index]))
            if truth.shape[0] >= 2:
                result[f"r2_{name}"] = float(r2_score(predicted[:, index], truth[:, index]))
        return result


def _present_only(per_class: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    present = torch.bincount(targets, minlength=classes) > 0
    return torch.where(present, per_class.float(), torch.full_like(per_class.float(), float("nan")))


def _nanmean(values: torch.Tensor) -> float:
    values = values.float()
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def write_metrics(results: dict[str, dict[str, float]], output_dir: str | os.PathLike) -> Path:
    """Write ``{set name: {metric: value}}`` to ``<output_dir>/metrics.json`` (NaN as null) and the
    same as rows ``test_set,metric,value`` to ``metrics.csv``; returns the JSON path."""
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {name: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()} for name, values in results.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True))
    lines = ["test_set,metric,value"] + [f"{name},{k},{'' if v is None else v}" for name, values in clean.items() for k, v in sorted(values.items())]
    path.with_suffix(".csv").write_text("\n".join(lines) + "\n")
    return path
