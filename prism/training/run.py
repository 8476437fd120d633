"""Build everything a Hydra config describes and train it: the body of ``train.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prism.training.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Fail before any compute on mistakes a user can fix from the command line."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and ckpt_path not in ("last", "hpc") and not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist. Point it at a .ckpt file, e.g. "
            f"ckpt_path=<run dir>/checkpoints/last.ckpt, or drop it to start a new run."
        )
    for key in ("data", "model", "module", "trainer"):
        if cfg.get(key) is None:
            raise ValueError(f"The config has no '{key}' section; pick one, e.g. {key}=<name> (see conf/{key}/).")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); ``None`` entries are skipped."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate datamodule, module and trainer from ``cfg`` (nothing is trained)."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    module = instantiate(cfg.module, net=net)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    plugins = [AtomicCheckpointIO()] if "fsdp" not in str(cfg.trainer.get("strategy", "")).lower() else []
    trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
        plugins=plugins,
    )
    return datamodule, module, trainer


def train(cfg: DictConfig, datamodule: L.LightningDataModule, module: L.LightningModule, trainer: L.Trainer) -> dict[str, float]:
    """Train what :func:`build` made; returns the final logged metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Finished at step %d; run directory %s", trainer.global_step, output_dir)
    return metrics
