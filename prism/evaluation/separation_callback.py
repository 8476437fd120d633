"""Callback: anatomy/sequence separation measures on held-out subjects, logged during pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from prism.evaluation.held_out import held_out_batches
from prism.evaluation.separation import collect_features, separation_report


class SeparationEvaluation(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), log ``separation/*`` measures.

    Args:
        crop_size, spacing_mm: of the held-out subjects (match the training data).
        num_subjects: held-out subjects (each under 4 sequences).
        every_n_steps: evaluation period.
        out_file: JSON lines file appended with each report (rank zero only).
    """

    def __init__(self, crop_size, spacing_mm: float = 2.0, num_subjects: int = 16, every_n_steps: int = 500, out_file: str | None = None):
        super().__init__()
        self.crop_size, self.spacing_mm, self.num_subjects = list(crop_size), spacing_mm, num_subjects
        self.every_n_steps, self.out_file = every_n_steps, out_file
        self._batches = None
        self._evaluated_step = -1

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if self._batches is None:
            self._batches = held_out_batches(self.crop_size, self.spacing_mm, self.num_subjects)
        report = separation_report(collect_features(pl_module.net, self._batches, pl_module.device))
        # straight to the loggers: once per evaluation, and allowed in on_train_end (self.log is not)
        for logger in trainer.loggers:
            logger.log_metrics({f"separation/{k}": v for k, v in report.items()}, step=trainer.global_step)
        self._evaluated_step = trainer.global_step
        if self.out_file and trainer.is_global_zero:
            Path(self.out_file).parent.mkdir(parents=True, exist_ok=True)
            with open(self.out_file, "a") as handle:
                handle.write(json.dumps({"step": trainer.global_step, **report}) + "\n")
        return report

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step != self._evaluated_step:
            self.evaluate(trainer, pl_module)
