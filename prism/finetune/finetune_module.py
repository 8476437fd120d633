"""The fine-tuning LightningModule: loss, layer-wise lr decay, warmup + cosine, metrics per test set.

The network is built in :meth:`FinetuneModule.setup` from ``datamodule.task`` (the
``model`` config is a partial of :func:`prism.finetune.networks.build_finetune_network`),
so one ``model`` config serves every task and adapter. Losses: ``segmentation_loss`` for
segmentation (default MONAI ``DiceCELoss`` over softmax outputs and integer labels; any MONAI
loss of that call signature from config, e.g. ``DiceFocalLoss``), cross-entropy for
classification, mean squared error on standardised targets for regression. Segmentation is
validated and tested on whole volumes with sliding windows. After ``trainer.test`` the metrics of every test set
(``datamodule.test_set_names``) are written to ``<output_dir>/metrics.json`` and
``metrics.csv`` and logged as ``test/<set>/<metric>``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from prism.finetune.layer_decay import param_groups_layer_decay
from prism.finetune.metrics import TaskMetrics, write_metrics
from prism.finetune.networks import BACKBONE_OPTIONS, NETWORK_OPTIONS, backbone_for, build_finetune_network, plain_options
from prism.finetune.task_spec import TaskSpec
from prism.training.optim import OptimizerFactory, SchedulerFactory

log = logging.getLogger(__name__)


def with_loaded_backbone(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Load the backbone of a :func:`build_finetune_network` partial now, so that a missing or wrong
    checkpoint fails when the module is built (before any data is made), not in ``setup``."""
    if not isinstance(factory, functools.partial) or factory.func is not build_finetune_network or "backbone" in factory.keywords:
        return factory
    options = {k: factory.keywords[k] for k in BACKBONE_OPTIONS if k in factory.keywords}
    return functools.partial(factory, backbone=backbone_for(**options))


class FinetuneModule(L.LightningModule):
    """Fine-tune a network built for the datamodule's task.

    Args:
        net: a network, or a factory ``net(task=..., roi_size=...)`` called in ``setup``
            (the Hydra ``model`` partial).
        optimizer: factory ``optimizer(param_groups, lr=...)`` (e.g. a partial AdamW).
        scheduler: factory ``scheduler(optimizer)`` stepped every optimizer step, or None.
        lr: learning rate of the head (and of every layer with ``layer_decay=1``).
        weight_decay: AdamW weight decay (not on biases, norms, tokens).
        layer_decay: per-block lr decay of the encoder in ``mode=finetune`` (1 = none);
            ignored in ``linear_probe`` (frozen) and ``scratch`` (all layers at ``lr``).
        segmentation_loss: ``loss(logits (B, C, ...), labels (B, 1, ...))`` for segmentation tasks;
            None = ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        output_dir: where ``metrics.json`` goes; None = the trainer's ``default_root_dir``.
        task: the task when no datamodule supplies it (e.g. manual use); else ``datamodule.task``.
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., nn.Module],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float = 0.75,
        output_dir: str | None = None,
        task: TaskSpec | None = None,
        segmentation_loss: nn.Module | None = None,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr} must be positive (module.lr).")
        self.net = net if isinstance(net, nn.Module) else None
        self.net_factory = None if isinstance(net, nn.Module) else with_loaded_backbone(net)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr, self.weight_decay, self.layer_decay = lr, weight_decay, layer_decay
        self.output_dir = output_dir
        self.task: TaskSpec | None = task or getattr(self.net, "task", None)
        self.segmentation_loss = segmentation_loss if segmentation_loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.val_metrics: TaskMetrics | None = None
        self.test_metrics: list[TaskMetrics] = []
        self.test_results: dict[str, dict[str, float]] = {}
        self.run_config: dict[str, Any] | None = None  # set by prism.training.run.build
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "task", "segmentation_loss"])

    # ------------------------------------------------------------------ setup
    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        if self.task is None:
            self.task = getattr(datamodule, "task", None)
        if self.task is None:
            raise ValueError("FinetuneModule needs a task: use a fine-tuning datamodule (it has .task) or pass task=TaskSpec(...).")
        if self.net is None:
            roi_size = getattr(datamodule, "crop_size", None)
            self.net = self.net_factory(task=self.task, roi_size=list(roi_size) if roi_size is not None else None)
        self.val_metrics = TaskMetrics(self.task, getattr(datamodule, "spacing_mm", None))

    @property
    def mode(self) -> str:
        return getattr(self.net, "mode", "finetune")

    # ----------------------------------------------------------------- losses
    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        kind = self.task.kind
        if kind == "segmentation":
            return self.segmentation_loss(outputs, batch["labels"].unsqueeze(1))
        if kind == "classification":
            return F.cross_entropy(outputs, batch["target"].long())
        return F.mse_loss(outputs, batch["target"].float())

    @staticmethod
    def target_of(batch: dict[str, Any]) -> torch.Tensor:
        return batch["labels"] if "labels" in batch and "target" not in batch else batch["target"]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """A frozen backbone (linear probe) stays in eval mode: Lightning restores module modes itself."""
        if self.net.backbone.frozen:
            self.net.backbone.eval()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.net(batch["image"], batch["view_present"])
        loss = self.loss(outputs, batch)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"Non-finite training loss at step {self.global_step} for subjects {batch.get('subject_id')}; "
                f"check these inputs for NaN/Inf or lower module.lr."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def evaluate(self, batch: dict[str, Any]) -> torch.Tensor:
        """Outputs on whole evaluation volumes (sliding windows for segmentation)."""
        if self.task.kind == "segmentation":
            return self.net.predict_volume(batch["image"], batch["view_present"])
        return self.net(batch["image"], batch["view_present"])

    # ------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.evaluate(batch)
        loss = self.loss(outputs, batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        self.val_metrics.update(outputs, self.target_of(batch))
        return loss

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.gather()
        for name, value in self.val_metrics.compute().items():
            if value == value:  # skip NaN (undefined on this set); identical on every rank after gather
                self.log(f"val/{name}", value)
        self.val_metrics.reset()

    # ------------------------------------------------------------------- test
    def test_set_names(self) -> list[str]:
        names = list(getattr(self._datamodule(), "test_set_names", None) or [])
        return names

    def on_test_epoch_start(self) -> None:
        spacing = getattr(self._datamodule(), "spacing_mm", None)
        self.test_metrics = []
        self._spacing = spacing

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        while len(self.test_metrics) <= dataloader_idx:
            self.test_metrics.append(TaskMetrics(self.task, self._spacing))
        outputs = self.evaluate(batch)
        self.log("test/loss", self.loss(outputs, batch), batch_size=batch["image"].shape[0])
        self.test_metrics[dataloader_idx].update(outputs, self.target_of(batch))

    def on_test_epoch_end(self) -> None:
        names = self.test_set_names()
        if names and len(names) < len(self.test_metrics):
            raise ValueError(f"datamodule.test_set_names has {len(names)} names for {len(self.test_metrics)} test loaders.")
        self.test_results = {}
        for index, metrics in enumerate(self.test_metrics):
            name = names[index] if names else f"test_{index}"
            metrics.gather()
            self.test_results[name] = metrics.compute()
            for metric, value in self.test_results[name].items():
                if value == value:  # identical on every rank after gather: no sync needed
                    self.log(f"test/{name}/{metric}", value)
        if self.trainer.is_global_zero:
            path = write_metrics(self.test_results, self.output_dir or self.trainer.default_root_dir)
            log.info("Test metrics written to %s", path)

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        encoder = self.net.backbone.encoder
        decay = self.layer_decay if self.mode == "finetune" else 1.0
        no_decay = {f"backbone.encoder.{n}" for n in encoder.no_weight_decay()}
        groups = param_groups_layer_decay(self.net.named_parameters(), encoder.depth, self.weight_decay, decay, no_decay)
        for group in groups:
            group["lr"] = self.lr * group["lr_scale"]
        optimizer = self.optimizer_factory(groups, lr=self.lr)
        log.info("Fine-tuning (%s): lr %.3g, layer decay %.3g, %d parameter groups.", self.mode, self.lr, decay, len(groups))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task and encoder architecture beside the weights (plain JSON-able values)."""
        options = getattr(self.net_factory, "keywords", {}) or {}
        checkpoint["prism_finetune"] = {
            "task": dataclasses.asdict(self.task),
            "mode": self.mode,
            "encoder": self.net.backbone.encoder.config(),
            "feature_source": self.net.backbone.feature_source,
            "anatomy_dim": self.net.backbone.anatomy.out_features if self.net.backbone.anatomy is not None else None,
            "network_options": {k: plain_options(options[k]) for k in NETWORK_OPTIONS if options.get(k) is not None},
            "roi_size": getattr(self.net, "roi_size", None),
        }
