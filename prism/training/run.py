"""Build everything a Hydra config describes and train it: the body of ``train.py``.

:func:`build` checks the config, the world size / global batch and the SLURM allocation
(``prism.training.distributed``) before anything is instantiated, so a bad submission fails
in seconds instead of after the model is on the GPUs. :func:`train` picks the checkpoint to
continue from (``prism.training.resume``) and fits. Two callbacks are always added:
``PreemptionCheckpoint`` (save + requeue on SLURM's warning signal) and ``StepSeed`` (per-rank,
resumable randomness).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from prism.training.checkpoint_io import AtomicCheckpointIO
from prism.training.distributed import BatchPlan, check_slurm_layout, devices_per_node, in_slurm_job, is_rank_zero_process, plan_global_batch
from prism.training.preemption import PreemptionCheckpoint
from prism.training.resume import CONFIG_FILE, check_same_experiment, resolve_ckpt_path, resume_mode
from prism.training.step_seed import StepSeed

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
    resume_mode(cfg.get("resume", "auto"))


def plan_distribution(cfg: DictConfig) -> BatchPlan:
    """Check the world size against SLURM and the global batch; writes the derived accumulation into ``cfg``.

    Raises:
        ValueError: the allocation and ``trainer.num_nodes``/``devices`` disagree, python runs
            without ``srun`` in a multi-task job, or ``global_batch_size`` does not divide.
    """
    trainer_cfg = cfg.trainer
    devices = devices_per_node(trainer_cfg.get("devices", 1), str(trainer_cfg.get("accelerator", "auto")))
    num_nodes = int(trainer_cfg.get("num_nodes", 1))
    check_slurm_layout(devices, num_nodes)
    per_device = cfg.data.get("batch_size")
    if per_device is None:  # a datamodule without a batch size (e.g. another task's): no global-batch rule
        if cfg.get("global_batch_size") is not None:
            raise ValueError("global_batch_size needs data.batch_size, which this data config does not have; drop global_batch_size.")
        per_device = 1
    plan = plan_global_batch(
        per_device=int(per_device),
        world_size=devices * num_nodes,
        global_batch_size=cfg.get("global_batch_size"),
        accumulate=int(trainer_cfg.get("accumulate_grad_batches", 1)),
    )
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = plan.accumulate
    log.info("World size %d (%d node(s) x %d device(s)); global batch %d = %d per device x %d x %d accumulated.",
             plan.world_size, num_nodes, devices, plan.global_batch, plan.per_device, plan.world_size, plan.accumulate)
    return plan


def output_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); ``None`` entries are skipped."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def log_lightning_through_root() -> None:
    """Print Lightning's log lines once: ``import lightning`` gives the ``lightning`` logger its own
    console handler and still propagates to the root logger, which Hydra has configured (console and
    the run's log file), so every line appeared twice. Where the root logger has handlers, keep those."""
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate datamodule, module and trainer from ``cfg`` (nothing is trained)."""
    log_lightning_through_root()
    check_config(cfg)
    plan_distribution(cfg)
    output_dir = output_dir_of(cfg)
    preemption = PreemptionCheckpoint(output_dir / "checkpoints")
    preemption.install()  # from now on the warning signal no longer kills the process
    if not cfg.get("ckpt_path") and resume_mode(cfg.get("resume", "auto")) == "auto":
        if resolve_ckpt_path(None, "auto", output_dir) is not None:
            check_same_experiment(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    module = instantiate(cfg.module, net=net)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    plugins: list[Any] = [AtomicCheckpointIO()] if "fsdp" not in str(cfg.trainer.get("strategy", "")).lower() else []
    if in_slurm_job():  # requeue is ours (PreemptionCheckpoint), not Lightning's mid-step handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    callbacks = instantiate_group(cfg.get("callbacks")) + [preemption, StepSeed(cfg.seed)]
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_group(cfg.get("logger")) or False,
        plugins=plugins,
    )
    return datamodule, module, trainer


def train(cfg: DictConfig, datamodule: L.LightningDataModule, module: L.LightningModule, trainer: L.Trainer) -> dict[str, float]:
    """Train what :func:`build` made, continuing from a checkpoint when there is one; returns the final metrics."""
    output_dir = output_dir_of(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume", "auto"), output_dir)
    if is_rank_zero_process():
        write_text_atomically(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test_after_fit", False):  # fine-tuning experiments: test sets with the final weights
        for results in trainer.test(module, datamodule=datamodule, verbose=False):
            metrics.update({k: float(v) for k, v in results.items()})
    log.info("Rank %d of %d finished at step %d; run directory %s", trainer.global_rank, trainer.world_size,
             trainer.global_step, output_dir)
    return metrics
