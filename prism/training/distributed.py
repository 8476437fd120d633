"""World size, global batch and the SLURM allocation: checked before any model is built.

The batch rule (the same on 1 GPU, 8 GPUs or N nodes)::

    global_batch = data.batch_size x devices x num_nodes x accumulate_grad_batches
    lr           = module.base_lr x global_batch / module.reference_batch   (PretrainModule)

With ``global_batch_size`` set in the config, ``accumulate_grad_batches`` is derived from it,
so the samples per optimizer step and the learning rate stay the same when the world size
changes (1 GPU accumulates 8 batches where 8 GPUs take one each). It must be a multiple of
``data.batch_size x world size``; otherwise :func:`plan_global_batch` refuses, naming the
nearest sizes that work.

Under SLURM every process is started by ``srun`` (one task per device), and Lightning's
``SLURMEnvironment`` reads the layout from ``SLURM_*`` variables. :func:`check_slurm_layout`
fails early, with the fix, when the allocation and the trainer disagree or when ``python``
was started without ``srun`` (which would hang in the rendezvous).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

SLURM_SBATCH_HINT = "submit with slurm/*.sbatch (see README 'Running on a cluster')"


@dataclass(frozen=True)
class BatchPlan:
    """Samples per optimizer step, split over devices, nodes and accumulation."""

    per_device: int
    world_size: int
    accumulate: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world_size * self.accumulate


def plan_global_batch(per_device: int, world_size: int, global_batch_size: int | None = None, accumulate: int = 1) -> BatchPlan:
    """Derive gradient accumulation from a requested global batch.

    Args:
        per_device: ``data.batch_size`` (subjects per device per forward pass).
        world_size: processes in the job (devices x nodes).
        global_batch_size: requested samples per optimizer step; ``None`` keeps ``accumulate``.
        accumulate: ``trainer.accumulate_grad_batches`` from the config (1 unless set by hand).

    Raises:
        ValueError: the request does not divide evenly, or contradicts a hand-set accumulation.
    """
    if per_device < 1 or world_size < 1 or accumulate < 1:
        raise ValueError(
            f"data.batch_size ({per_device}), world size ({world_size}) and trainer.accumulate_grad_batches "
            f"({accumulate}) must all be >= 1."
        )
    if global_batch_size is None:
        return BatchPlan(per_device, world_size, accumulate)
    global_batch_size = int(global_batch_size)
    step = per_device * world_size
    if global_batch_size < step or global_batch_size % step:
        nearest = sorted({max(step, global_batch_size // step * step), (global_batch_size // step + 1) * step})
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size x world size = "
            f"{per_device} x {world_size} = {step}. Use global_batch_size="
            f"{' or '.join(str(size) for size in nearest)}, or change data.batch_size / the number of devices."
        )
    derived = global_batch_size // step
    if accumulate not in (1, derived):
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate} contradicts global_batch_size={global_batch_size} "
            f"(which needs {derived} at {per_device} x {world_size}). Set only one of them."
        )
    return BatchPlan(per_device, world_size, derived)


def in_slurm_job(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a SLURM job whose processes Lightning takes from SLURM (not ``--job-name=bash/interactive``)."""
    return "SLURM_JOB_ID" in env and "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _env_int(env: Mapping[str, str], name: str, option: str) -> int:
    value = env.get(name)
    if value is None:
        raise ValueError(f"{name} is not set in this SLURM job; add `#SBATCH {option}` to the job script ({SLURM_SBATCH_HINT}).")
    try:
        return int(value.split("(")[0])  # "8(x2)" style values: the first count
    except ValueError as err:
        raise ValueError(f"{name}={value!r} is not an integer; set `#SBATCH {option}` explicitly.") from err


def devices_per_node(devices: Any, accelerator: str, env: Mapping[str, str] = os.environ) -> int:
    """The number of processes per node the trainer will start for ``trainer.devices``.

    ``-1`` / ``"auto"`` mean all GPUs of the node (one under ``accelerator=cpu``); under SLURM
    the tasks per node decide, as in Lightning.
    """
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, int) and devices > 0:
        return devices
    if devices not in (-1, "auto"):
        raise ValueError(f"trainer.devices={devices!r} is not understood; use a positive int, -1 or a list of GPU ids.")
    if in_slurm_job(env) and "SLURM_NTASKS_PER_NODE" in env:
        return _env_int(env, "SLURM_NTASKS_PER_NODE", "--ntasks-per-node=<GPUs per node>")
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    if accelerator in ("gpu", "cuda"):
        raise ValueError(f"trainer.accelerator={accelerator} but no GPU is visible; use trainer=cpu or trainer=ddp_cpu here.")
    return 1


def check_slurm_layout(devices: int, num_nodes: int, env: Mapping[str, str] = os.environ) -> None:
    """Fail when the trainer's processes do not match the SLURM allocation (no-op outside SLURM).

    Lightning's ``SLURMEnvironment`` expects ``srun`` to start ``devices x num_nodes`` tasks,
    ``devices`` per node, so ``--nodes``/``--ntasks-per-node`` must equal ``trainer.num_nodes``/
    ``trainer.devices``. A multi-task job whose python was started without ``srun`` would wait
    forever for the missing ranks.
    """
    if not in_slurm_job(env):
        return
    ntasks = _env_int(env, "SLURM_NTASKS", "--ntasks-per-node=<GPUs per node>")
    world = devices * num_nodes
    if ntasks == 1 and world == 1:
        return
    nnodes = _env_int(env, "SLURM_NNODES", f"--nodes={num_nodes}")
    per_node = _env_int(env, "SLURM_NTASKS_PER_NODE", f"--ntasks-per-node={devices}")
    if nnodes != num_nodes:
        raise ValueError(
            f"trainer.num_nodes={num_nodes} but this SLURM job has {nnodes} node(s) (SLURM_NNODES). "
            f"Pass trainer.num_nodes={nnodes}, or submit with --nodes={num_nodes}."
        )
    if per_node != devices:
        raise ValueError(
            f"trainer.devices={devices} per node but this SLURM job runs {per_node} task(s) per node "
            f"(SLURM_NTASKS_PER_NODE). Pass trainer.devices={per_node}, or submit with --ntasks-per-node={devices} "
            f"(one task per device)."
        )
    if ntasks != world:
        raise ValueError(
            f"SLURM_NTASKS={ntasks} but trainer.devices x trainer.num_nodes = {devices} x {num_nodes} = {world}. "
            f"Request --nodes={num_nodes} --ntasks-per-node={devices} and no other task count."
        )
    if "SLURM_STEP_ID" not in env:
        raise ValueError(
            f"This SLURM job has {ntasks} tasks but python was started without srun, so {ntasks - 1} rank(s) "
            f"would never join. Launch it as `srun python train.py ...` ({SLURM_SBATCH_HINT})."
        )


def slurm_requeue_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for array tasks, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def is_rank_zero_process(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process will be global rank 0, decided from the environment before any process group exists.

    ``RANK`` (torchrun), ``NODE_RANK``/``LOCAL_RANK`` (Lightning's own launcher), then ``SLURM_PROCID`` (srun).
    """
    if env.get("RANK", "").isdigit():
        return int(env["RANK"]) == 0
    if env.get("LOCAL_RANK", "").isdigit():
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", "0") or 0) == 0
    if in_slurm_job(env) and env.get("SLURM_PROCID", "").isdigit():
        return int(env["SLURM_PROCID"]) == 0
    return True
