"""The pretraining LightningModule: one encoder pass per step, a weighted sum of objectives.

Each step encodes every view of every subject once (views flattened into the batch),
with ONE random mask per subject shared by its views, so the kept tokens of two
sequences of one subject are the same anatomical positions. Objectives (see
``prism.objectives``) read the resulting :class:`PretrainStep`; an objective with
weight 0 is not built, so its compute is skipped entirely.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from prism.models.masking import random_masking
from prism.models.patches import patchify
from prism.models.pretrain_network import PretrainNetwork
from prism.models.sequence_eraser import within_subject_residuals
from prism.objectives.base import Objective, PretrainStep
from prism.sequences import ACQUISITION_PARAMETERS, SEQUENCE_TYPES
from prism.training.optim import OptimizerFactory, SchedulerFactory, param_groups_weight_decay, scaled_learning_rate

log = logging.getLogger(__name__)


class PretrainModule(L.LightningModule):
    """Pretrain a :class:`PretrainNetwork` with weighted objectives.

    Args:
        net: the network (encoder, latent split, decoder).
        objectives: name -> :class:`Objective`; those with weight 0 are dropped.
        optimizer: factory ``optimizer(param_groups, lr=...)`` (e.g. a partial AdamW).
        scheduler: factory ``scheduler(optimizer)`` stepped every optimizer step, or None.
        mask_ratio: fraction of patches removed per subject.
        base_lr: learning rate at ``reference_batch`` samples per optimizer step.
        reference_batch: batch size ``base_lr`` refers to (linear scaling); None: no scaling.
        weight_decay: AdamW weight decay (not applied to biases, norms, tokens, positions).
    """

    def __init__(
        self,
        net: PretrainNetwork,
        objectives: dict[str, Objective],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        mask_ratio: float = 0.75,
        base_lr: float = 1.5e-4,
        reference_batch: int | None = 256,
        weight_decay: float = 0.05,
    ):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio} (module.mask_ratio).")
        active = {name: obj for name, obj in objectives.items() if obj is not None and obj.weight > 0}
        if not active:
            raise ValueError("Every objective has weight 0: nothing to train. Give at least one module.objectives.*.weight > 0.")
        self.net = net
        self.objectives = nn.ModuleDict(active)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.mask_ratio, self.base_lr, self.reference_batch, self.weight_decay = mask_ratio, base_lr, reference_batch, weight_decay
        self.run_config: dict[str, Any] | None = None  # resolved Hydra config, set by the run; stored in checkpoints
        self._eraser_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's eraser statistics, applied after backward
        self.save_hyperparameters(ignore=["net", "objectives", "optimizer", "scheduler"])

    # ----------------------------------------------------------------- forward
    def forward_step(self, batch: dict[str, Any]) -> PretrainStep:
        """Encode and reconstruct every view; returns the record objectives read."""
        image = batch["image"]
        b, v, *spatial = image.shape
        volumes = image.reshape(b * v, 1, *spatial)
        grid = self.net.encoder.grid_for(spatial)
        num_tokens = grid[0] * grid[1] * grid[2]
        ids_keep, mask, ids_restore = random_masking(b, num_tokens, self.mask_ratio, image.device)
        ids_keep, mask, ids_restore = (t.repeat_interleave(v, dim=0) for t in (ids_keep, mask, ids_restore))
        features = self.net.encode(volumes, ids_keep=ids_keep)
        prediction = self.net.decode(features["anatomy"], features["sequence_code"], ids_restore, grid)
        return PretrainStep(
            network=self.net,
            num_subjects=b,
            num_views=v,
            volumes=volumes,
            target=patchify(volumes, self.net.patch_size),
            view_present=batch["view_present"].reshape(-1),
            sequence_id=batch["sequence_id"].reshape(-1),
            acq_params=batch["acq_params"].reshape(b * v, -1),
            acq_present=batch["acq_present"].reshape(b * v, -1),
            mask=mask,
            ids_restore=ids_restore,
            grid=grid,
            features=features,
            prediction=prediction,
            subject_id=list(batch.get("subject_id", [])),
            ids_keep=ids_keep,
        )

    def compute_losses(self, step: PretrainStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and the unweighted loss of each objective that applied to this batch."""
        losses: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            loss = objective(step)
            if loss is not None:
                losses[name] = loss
        total = sum(self.objectives[name].weight * loss for name, loss in losses.items())
        if not torch.is_tensor(total):  # nothing applied: keep the graph valid with a zero
            total = step.prediction.sum() * 0.0
        return total, losses

    def _shared_step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, PretrainStep]:
        step = self.forward_step(batch)
        total, losses = self.compute_losses(step)
        if not torch.isfinite(total.detach()):
            bad = [name for name, loss in losses.items() if not torch.isfinite(loss.detach())]
            raise FloatingPointError(
                f"Non-finite {stage} loss at step {self.global_step} (objectives {bad or ['total']}) "
                f"for subjects {step.subject_id}. Check these inputs for NaN/Inf, or lower the learning rate."
            )
        batch_size = step.num_subjects
        sync = stage != "train"
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=sync)
        for name, loss in losses.items():
            self.log(f"{stage}/{name}", loss, batch_size=batch_size, sync_dist=sync)
        return total, step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, step = self._shared_step(batch, "train")
        self._eraser_batch = self.eraser_statistics(step)
        return total

    def eraser_statistics(self, step: PretrainStep) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Within-subject residuals of the un-erased pooled anatomy and their sequence types, for the eraser."""
        if self.net.split.eraser is None:
            return None
        with torch.no_grad():  # the projection commutes with the token mean: project the mean patch token
            pooled = self.net.split.anatomy(step.features["patch"].detach().mean(dim=1)).float()
            known = step.view_present & (step.sequence_id >= 0)
            residuals, kept = within_subject_residuals(pooled, step.num_views, known)
        return residuals[kept], step.sequence_id[kept]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after backward: the forward's projection must not change under autograd
        statistics, self._eraser_batch = self._eraser_batch, None
        if statistics is not None:
            self.net.split.eraser.update(*statistics)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        total, step = self._shared_step(batch, "val")
        return {"loss": total, "step": step if batch_idx == 0 else None}

    # -------------------------------------------------------------- optimizer
    def global_batch_size(self) -> int:
        """Samples (subjects) per optimizer step across all devices and accumulation."""
        per_device = int(getattr(self.trainer.datamodule, "batch_size", 1))
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict[str, Any]:
        lr = scaled_learning_rate(self.base_lr, self.global_batch_size(), self.reference_batch)
        no_decay = {f"net.{n}" for n in self.net.no_weight_decay()}
        groups = param_groups_weight_decay(self.named_parameters(), self.weight_decay, no_decay)
        optimizer = self.optimizer_factory(groups, lr=lr)
        if self.reference_batch:
            log.info("Optimizer lr %.3g (base_lr %.3g x global batch %d / %s).", lr, self.base_lr, self.global_batch_size(), self.reference_batch)
        else:
            log.info("Optimizer lr %.3g (base_lr, not scaled with the batch: reference_batch is null).", lr)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Let a checkpoint written before the objectives' running state (feature banks, running means)
        was saved resume: that state starts empty, as it did then, instead of failing the strict load."""
        state, own = checkpoint.get("state_dict", {}), self.state_dict()
        missing = [k for k in own if k.startswith("objectives.") and k not in state]
        if missing:
            log.warning("The checkpoint holds no running state for %s: it starts empty and refills in a few steps.",
                        sorted({k.split(".")[1] for k in missing}))
            state.update({k: own[k] for k in missing})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-describing (see ``prism export``): plain JSON-able metadata only."""
        config_json = json.dumps(self.run_config or {}, sort_keys=True, default=str)
        checkpoint["prism"] = {
            "encoder": self.net.encoder.config(),
            "anatomy_dim": self.net.split.anatomy_dim,
            "sequence_dim": self.net.split.sequence_dim,
            "sequence_types": list(SEQUENCE_TYPES),
            "acquisition_parameters": list(ACQUISITION_PARAMETERS),
            "objectives": {name: obj.weight for name, obj in self.objectives.items()},
            "config_json": config_json,
            "config_hash": hashlib.sha256(config_json.encode()).hexdigest()[:16],
        }
