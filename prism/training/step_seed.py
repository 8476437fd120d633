"""Randomness of training step ``k`` on rank ``r`` = a pure function of ``(seed, r, k)``.

The data already works this way (``prism.data.stream``). This callback does the same for
everything drawn from torch's global generator inside a step: MAE masks, drop-path. Before
each training batch it seeds torch from ``(seed, global rank, batches started)``, so

* ranks draw different masks (``seed_everything`` alone gives every rank the same stream);
* a run resumed from a checkpoint draws exactly the masks the uninterrupted run drew (the
  batch counter is saved in the checkpoint), and validation in between changes nothing;
* validation batch ``i`` always gets the same masks, so validation losses are comparable.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from prism.data.stream import stream_seed


class StepSeed(Callback):
    """Seed torch's global generator before every training and validation batch.

    Args:
        seed: the run seed (``cfg.seed``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.batches_started = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(stream_seed(self.seed, trainer.global_rank, self.batches_started, salt="train-step"))
        self.batches_started += 1

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        torch.manual_seed(stream_seed(self.seed, trainer.global_rank, batch_idx, salt="validation-step"))

    def state_dict(self) -> dict[str, Any]:
        return {"batches_started": self.batches_started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_started = int(state_dict.get("batches_started", 0))
