"""``last.ckpt`` every N steps AND when training ends, so a finished run always leaves its final state."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that keeps only ``last.ckpt``: every ``every_n_train_steps`` and at train end.

    Lightning's own callback skips the end of a run that stops between two periods
    (``max_steps`` not a multiple of the period); this one writes it too.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 100, **kwargs):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run or trainer.global_step == 0:
            return
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        trainer.save_checkpoint(str(path), weights_only=False)  # full state for resuming; only rank zero writes
        self.last_model_path = str(path)
