"""Checkpoint at the next optimizer step when the cluster ends the job, then requeue it.

SLURM warns a job before its time limit with the signal asked for by ``#SBATCH
--signal=USR1@120`` (submitit uses USR2), and ``scancel -s USR1 <job>`` sends the same
signal by hand (how the preemption test simulates it). Lightning's own SLURM handler saves
*inside* the signal handler, i.e. in the middle of a step: the checkpoint then counts a
batch whose update it does not contain, and a collective started from a handler can
deadlock DDP. Here the handler only records the request; at the next optimizer-step
boundary all ranks agree (one two-element all-reduce), save
``<checkpoint_dir>/hpc_ckpt_<step>.ckpt``, rank zero runs ``scontrol requeue <job>``, and
training stops. The requeued job runs in the same run directory (``conf/hydra/default.yaml``),
finds that checkpoint (``prism.training.resume``) and continues with the same step, learning-
rate schedule and data position.

SIGTERM (``scancel``, preemption by a higher-priority job, the time limit reached without a
warning) gets the same save without a requeue: at the next step boundary, or, when Lightning's
own SIGTERM handling stops the loop first (``SIGTERMException``, raised on all ranks together),
from ``on_exception``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from prism.training.distributed import in_slurm_job, slurm_requeue_job_id

log = logging.getLogger(__name__)

REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"


def _signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError as err:
        raise ValueError(f"Unknown signal {name!r}; use names like SIGUSR1 or USR2.") from err


class PreemptionCheckpoint(Callback):
    """Save (and under SLURM requeue) at the first optimizer step after a warning signal.

    Args:
        checkpoint_dir: where ``hpc_ckpt_<step>.ckpt`` goes (the run's ``checkpoints/``).
        requeue_signals: signals that mean "save, requeue, stop" (``#SBATCH --signal``).
        save_on_sigterm: also save (without requeue) on SIGTERM.
        requeue: run ``scontrol requeue`` under SLURM; ``False`` only saves and stops.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        requeue_signals: tuple[str, ...] | list[str] = REQUEUE_SIGNALS,
        save_on_sigterm: bool = True,
        requeue: bool = True,
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requeue_signals = tuple(_signal(name) for name in requeue_signals)
        self.save_on_sigterm, self.requeue = save_on_sigterm, requeue
        self.requeue_requested = False
        self.stop_requested = False
        self.received: list[str] = []
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._last_checked_step = -1

    # ------------------------------------------------------------------ signals
    def install(self) -> None:
        """Catch the requeue signals now (their default action kills the process); idempotent."""
        for signum in self.requeue_signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._on_requeue_signal)

    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requeue_requested = True  # only flags: the save happens at the next step boundary
        self.received.append(signal.Signals(signum).name)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.received.append("SIGTERM")
        previous = self._previous.get(signal.SIGTERM)
        if callable(previous):
            previous(signum, frame)

    def restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.install()
        # Before Lightning registers its own SIGTERM handler, which then calls this one as well.
        if self.save_on_sigterm and signal.SIGTERM not in self._previous:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.restore_handlers()

    # ------------------------------------------------------------ step boundary
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The resumed (or initial) step is not a new boundary: the first check comes after the
        # first optimizer step, never in the middle of gradient accumulation.
        self._last_checked_step = trainer.global_step

    def _agreed_request(self, trainer: L.Trainer) -> tuple[bool, bool]:
        """(requeue, stop) as requested by any rank; one all-reduce when there are several ranks."""
        flags = torch.tensor([float(self.requeue_requested), float(self.stop_requested)])
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_checked_step:  # inside gradient accumulation: not a step boundary
            return
        self._last_checked_step = trainer.global_step
        requeue, stop = self._agreed_request(trainer)
        if not (requeue or stop):
            return
        reason = ", ".join(dict.fromkeys(self.received)) or "a signal on another rank"
        path = self.save(trainer)
        log.warning("%s: saved %s at step %d.", reason, path, trainer.global_step)
        if requeue and self.requeue:
            self.requeue_job(trainer)
        trainer.should_stop = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not self.save_on_sigterm:
            return
        if self.saved_path is not None and self.saved_path.name == f"hpc_ckpt_{trainer.global_step}.ckpt":
            return
        try:  # every rank raised together after Lightning's barrier, so all take part
            path = self.save(trainer)
        except Exception as err:  # never hide the SIGTERM itself
            log.error("SIGTERM: could not save a checkpoint at step %d: %s", trainer.global_step, err)
            return
        log.warning("SIGTERM: saved %s at step %d.", path, trainer.global_step)

    def save(self, trainer: L.Trainer) -> Path:
        """Write ``hpc_ckpt_<step>.ckpt`` (every rank takes part) and drop older ones (rank zero)."""
        path = self.checkpoint_dir / f"hpc_ckpt_{trainer.global_step}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # full state: this checkpoint is for resuming
        if trainer.is_global_zero:
            for old in self.checkpoint_dir.glob(HPC_CHECKPOINT_GLOB):
                if old != path:
                    old.unlink(missing_ok=True)
        trainer.strategy.barrier("prism_preemption_checkpoint")
        self.saved_path = path
        return path

    def requeue_job(self, trainer: L.Trainer) -> None:
        """Rank zero asks SLURM to requeue this job (it then kills this incarnation)."""
        if not trainer.is_global_zero:
            return
        job_id = slurm_requeue_job_id()
        if not in_slurm_job() or job_id is None:
            log.warning("Not a SLURM job: nothing to requeue. Rerun the same command with hydra.run.dir=%s to continue.",
                        self.checkpoint_dir.parent)
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.error("scontrol requeue %s failed (%s). Resubmit with hydra.run.dir=%s to continue.", job_id, err, self.checkpoint_dir.parent)
            return
        if result.returncode == 0:
            log.warning("Requeued SLURM job %s; it resumes from the checkpoint above.", job_id)
        else:
            log.error("scontrol requeue %s failed: %s. Is the job requeueable (#SBATCH --requeue)? Resubmit with "
                      "hydra.run.dir=%s to continue.", job_id, (result.stderr or result.stdout).strip(), self.checkpoint_dir.parent)
