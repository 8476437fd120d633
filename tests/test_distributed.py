"""Scale-out without a cluster: batch rule, SLURM layout checks, launch.sh, resume, preemption, per-rank seeds.

The real SLURM jobs are in tests/test_slurm.py (marked ``slurm``); here the ``SLURM_*``
environment is faked, ``srun`` is a stub, and a 2-process gloo run uses Lightning's own launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from prism.training.distributed import check_slurm_layout, devices_per_node, is_rank_zero_process, plan_global_batch
from prism.training.resume import check_same_experiment, newest_checkpoint, resolve_ckpt_path
from prism.training.step_seed import StepSeed
from test_train import ROOT, TINY, compose_cfg

LAUNCH = ROOT / "slurm" / "launch.sh"


def slurm_env(nodes: int, tasks_per_node: int, step: bool = True, **extra: str) -> dict[str, str]:
    """What srun sets in a job of ``nodes`` x ``tasks_per_node`` tasks (or sbatch's batch shell without ``step``)."""
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "prism", "SLURM_NNODES": str(nodes),
           "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_NTASKS_PER_NODE": str(tasks_per_node)}
    if step:
        env["SLURM_STEP_ID"] = "0"
    return {**env, **extra}


# ------------------------------------------------------------------------- global batch rule
@pytest.mark.parametrize("world_size,accumulate", [(1, 8), (2, 4), (8, 1)])
def test_global_batch_is_kept_across_world_sizes_by_accumulation(world_size, accumulate):
    plan = plan_global_batch(per_device=2, world_size=world_size, global_batch_size=16)
    assert (plan.accumulate, plan.global_batch) == (accumulate, 16)


def test_without_a_global_batch_the_config_accumulation_is_kept():
    plan = plan_global_batch(per_device=4, world_size=2, global_batch_size=None, accumulate=3)
    assert (plan.accumulate, plan.global_batch) == (3, 24)


def test_world_size_not_dividing_the_global_batch_names_the_sizes_that_work():
    with pytest.raises(ValueError, match=r"global_batch_size=16 is not a multiple of .* 2 x 3 = 6\. Use global_batch_size=12 or 18"):
        plan_global_batch(per_device=2, world_size=3, global_batch_size=16)
    with pytest.raises(ValueError, match=r"= 8\. Use global_batch_size=8, or change"):
        plan_global_batch(per_device=2, world_size=4, global_batch_size=4)


def test_hand_set_accumulation_contradicting_the_global_batch_is_refused():
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 contradicts global_batch_size=16"):
        plan_global_batch(per_device=2, world_size=2, global_batch_size=16, accumulate=2)


def test_build_derives_accumulation_and_scales_the_learning_rate(tmp_path):
    from prism.training.run import build

    cfg = compose_cfg(TINY + ["global_batch_size=8", "module.reference_batch=4"], tmp_path)
    datamodule, module, trainer = build(cfg)
    assert trainer.accumulate_grad_batches == 4  # data.batch_size 2 x 1 device x 4 = 8
    module._trainer = SimpleNamespace(datamodule=datamodule, world_size=1, accumulate_grad_batches=4)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(cfg.module.base_lr * 8 / 4)  # before warm-up


# ----------------------------------------------------------------------- SLURM layout checks
def test_devices_per_node_reads_lists_ids_and_the_slurm_tasks():
    assert devices_per_node([0, 1, 2], "gpu", env={}) == 3
    assert devices_per_node("0,1", "gpu", env={}) == 2
    assert devices_per_node(4, "gpu", env={}) == 4
    assert devices_per_node(-1, "cpu", env={}) == 1
    assert devices_per_node(-1, "gpu", env=slurm_env(2, 8)) == 8
    with pytest.raises(ValueError, match="trainer.devices='many' is not understood"):
        devices_per_node("many", "gpu", env={})


def test_a_matching_allocation_passes():
    check_slurm_layout(devices=8, num_nodes=4, env=slurm_env(4, 8, SLURM_NTASKS_PER_NODE="8(x4)"))
    check_slurm_layout(devices=2, num_nodes=3, env={})  # not in SLURM: nothing to check


@pytest.mark.parametrize(
    "devices,num_nodes,env,message",
    [
        (8, 2, slurm_env(1, 8), r"trainer.num_nodes=2 but this SLURM job has 1 node\(s\).*--nodes=2"),
        (8, 1, slurm_env(1, 4), r"trainer.devices=8 per node but this SLURM job runs 4 task\(s\) per node"),
        (2, 1, slurm_env(1, 2, step=False), "python was started without srun"),
        (2, 1, {k: v for k, v in slurm_env(1, 2).items() if k != "SLURM_NNODES"}, r"SLURM_NNODES is not set.*#SBATCH --nodes=1"),
        (2, 1, slurm_env(1, 2, SLURM_NTASKS="3"), "SLURM_NTASKS=3 but trainer.devices x trainer.num_nodes = 2 x 1 = 2"),
    ],
)
def test_a_disagreeing_allocation_fails_with_the_fix(devices, num_nodes, env, message):
    with pytest.raises(ValueError, match=message):
        check_slurm_layout(devices, num_nodes, env=env)


def test_train_py_refuses_num_nodes_that_disagree_with_the_allocation_before_building(tmp_path):
    env = {**os.environ, **slurm_env(1, 2), "PRISM_LOG_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "+debug=fast_dev_run", "logger=csv", "trainer=ddp_cpu", "trainer.num_nodes=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "prism train: error: trainer.num_nodes=2 but this SLURM job has 1 node(s)" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------------------ launch.sh
def fake_srun(tmp_path: Path) -> dict[str, str]:
    """A PATH whose ``srun`` prints its arguments instead of starting tasks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun $*"\n')
    (bin_dir / "srun").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PRISM_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT)}


def run_launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(LAUNCH), *args], env={**clean, **env}, capture_output=True, text=True, timeout=30)


def test_launch_sh_passes_the_allocation_to_the_trainer_through_srun(tmp_path):
    result = run_launch({**fake_srun(tmp_path), **slurm_env(2, 4, step=False, SLURM_NTASKS_PER_NODE="4(x2)")},
                        "ddp", "+experiment=pretrain", "trainer=fsdp")
    assert result.returncode == 0, result.stderr
    assert f"prism-task {sys.executable} train.py trainer=ddp trainer.num_nodes=2 trainer.devices=4 " \
           "+experiment=pretrain trainer=fsdp" in result.stdout
    assert '\nsrun --kill-on-bad-exit=1 bash -c trap "" USR1 USR2; exec "$@" prism-task' in result.stdout  # early signals ignored


@pytest.mark.parametrize("missing", ["SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"])
def test_launch_sh_names_a_missing_slurm_variable(tmp_path, missing):
    env = {k: v for k, v in {**fake_srun(tmp_path), **slurm_env(1, 2, step=False)}.items() if k != missing}
    result = run_launch(env, "ddp_cpu")
    assert result.returncode == 2
    assert f"prism slurm: error: {missing} is not set" in result.stderr
    assert "srun" not in result.stdout


def test_launch_sh_refuses_a_task_count_that_is_not_whole_nodes(tmp_path):
    result = run_launch({**fake_srun(tmp_path), **slurm_env(2, 4, step=False, SLURM_NTASKS="7")}, "ddp")
    assert result.returncode == 2 and "SLURM_NTASKS=7 is not --nodes x --ntasks-per-node = 2 x 4" in result.stderr


def test_every_job_script_runs_launch_sh_and_asks_for_the_warning_signal():
    for script in ("single_node", "multi_node", "cpu_ddp"):
        text = (ROOT / "slurm" / f"{script}.sbatch").read_text()
        assert "#SBATCH --requeue" in text and "#SBATCH --signal=USR1@" in text
        assert 'slurm/launch.sh"' in text


# --------------------------------------------------------------------------------- resume
def write_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    return path


def test_resume_auto_picks_the_checkpoint_furthest_along(tmp_path):
    assert resolve_ckpt_path(None, "auto", tmp_path) is None  # first start: nothing to resume, no error
    write_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 300)
    newest = write_checkpoint(tmp_path / "checkpoints" / "hpc_ckpt_350.ckpt", 350)
    write_checkpoint(tmp_path / "checkpoints" / "best_step0000100.ckpt", 100)  # not a resume point
    (tmp_path / "checkpoints" / "last-v1.ckpt").write_bytes(b"half a file")  # unreadable: ranked last
    assert newest_checkpoint(tmp_path) == newest
    write_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 350)  # same step: the preemption save wins
    assert resolve_ckpt_path(None, "auto", tmp_path) == str(newest)
    assert resolve_ckpt_path(None, "never", tmp_path) is None
    assert resolve_ckpt_path("/explicit.ckpt", "auto", tmp_path) == "/explicit.ckpt"
    with pytest.raises(ValueError, match="resume='sometimes' is not understood"):
        resolve_ckpt_path(None, "sometimes", tmp_path)


def test_auto_resume_refuses_checkpoints_of_another_experiment(tmp_path):
    from omegaconf import OmegaConf, open_dict

    cfg = compose_cfg(TINY, tmp_path)
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_same_experiment(cfg, tmp_path)
    with open_dict(cfg):
        cfg.model.encoder.depth = 3
        cfg.seed = 7
    with pytest.raises(ValueError, match=r"different experiment \(seed: 42 -> 7; model.encoder.depth: 2 -> 3\).*resume=never"):
        check_same_experiment(cfg, tmp_path)


# ----------------------------------------------------------------- preemption (one process)
class SendSignalAt(Callback):
    """Sends ``signum`` to this process once training has reached ``step``."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_warning_signal_saves_at_the_step_boundary_and_auto_resume_continues(tmp_path):
    from prism.training.run import build, train

    overrides = TINY + ["trainer.max_steps=5", "trainer.val_check_interval=100", "callbacks.last_checkpoint.every_n_train_steps=100"]
    cfg = compose_cfg(overrides, tmp_path)
    handler_before = signal.getsignal(signal.SIGUSR1)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(SendSignalAt(step=2, signum=signal.SIGUSR1))
    train(cfg, datamodule, module, trainer)
    assert trainer.global_step == 3  # the step running when the signal came is finished, then it stops
    saved = tmp_path / "checkpoints" / "hpc_ckpt_3.ckpt"
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == 3 and state["SynthDataModule"]["batches_consumed"] == 3
    assert state["callbacks"]["StepSeed"]["batches_started"] == 3
    assert signal.getsignal(signal.SIGUSR1) == handler_before  # restored after fit

    resumed = compose_cfg(overrides, tmp_path)  # same command again, as the requeued job runs it
    datamodule, module, trainer = build(resumed)
    train(resumed, datamodule, module, trainer)
    assert trainer.global_step == 5 and datamodule.batches_consumed == 5



def test_a_run_stopped_by_the_warning_signal_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """Everything a step depends on is in the checkpoint: weights, optimizer, data position, seeds, and the
    objectives' running state (the invariance's per-position mean, the leak probe's feature bank: a small
    bank so the probe is in use before the stop)."""
    from prism.training.run import build, train

    overrides = TINY + ["trainer.max_steps=6", "trainer.val_check_interval=100", "callbacks.last_checkpoint.every_n_train_steps=100",
                        "module.objectives.linear_leak.bank_size=16", "module.objectives.linear_leak.min_bank=4"]
    reference_cfg = compose_cfg(overrides, tmp_path / "reference")
    train(reference_cfg, *build(reference_cfg))
    cfg = compose_cfg(overrides, tmp_path / "stopped")
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(SendSignalAt(step=2, signum=signal.SIGUSR1))
    train(cfg, datamodule, module, trainer)
    saved = torch.load(tmp_path / "stopped" / "checkpoints" / "hpc_ckpt_3.ckpt", weights_only=True)["state_dict"]
    assert int((saved["objectives.linear_leak.bank.labels"] >= 0).sum()) >= 4  # the probe was in use
    assert saved["objectives.invariance.position_seen"].any()
    resumed = compose_cfg(overrides, tmp_path / "stopped")
    train(resumed, *build(resumed))

    final = {name: torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True) for name in ("reference", "stopped")}
    assert final["stopped"]["global_step"] == final["reference"]["global_step"] == 6
    for name, tensor in final["reference"]["state_dict"].items():
        torch.testing.assert_close(final["stopped"]["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_a_checkpoint_without_the_objectives_running_state_still_resumes(tmp_path):
    from prism.training.run import build, train

    overrides = TINY + ["trainer.max_steps=2", "trainer.val_check_interval=100", "callbacks.last_checkpoint.every_n_train_steps=100"]
    cfg = compose_cfg(overrides, tmp_path)
    train(cfg, *build(cfg))
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    dropped = [k for k in checkpoint["state_dict"] if k.startswith("objectives.")]
    assert dropped  # the objectives' running state is saved ...
    for key in dropped:  # ... and a checkpoint written before it was still resumes
        del checkpoint["state_dict"][key]
    torch.save(checkpoint, last)
    resumed = compose_cfg(TINY + ["trainer.max_steps=3", f"ckpt_path={last}"], tmp_path)
    datamodule, module, trainer = build(resumed)
    train(resumed, datamodule, module, trainer)
    assert trainer.global_step == 3

# ------------------------------------------------------------------ per-rank, resumable seeds
def masks_drawn(seed: int, rank: int, batches: int, start_state: dict | None = None) -> list[torch.Tensor]:
    callback, trainer = StepSeed(seed), SimpleNamespace(global_rank=rank)
    if start_state:
        callback.load_state_dict(start_state)
    drawn = []
    for index in range(batches):
        callback.on_train_batch_start(trainer, None, None, index)
        drawn.append(torch.rand(4))
    return drawn


def test_step_seed_differs_between_ranks_and_repeats_after_resume():
    rank0, rank1 = masks_drawn(42, 0, 4), masks_drawn(42, 1, 4)
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))
    resumed = masks_drawn(42, 0, 2, start_state={"batches_started": 2})
    assert all(torch.equal(a, b) for a, b in zip(rank0[2:], resumed))


# ------------------------------------------------------------------------ rank-zero writing
def test_rank_zero_is_decided_from_torchrun_lightning_or_slurm_variables():
    assert is_rank_zero_process({})
    assert not is_rank_zero_process({"RANK": "1"})
    assert not is_rank_zero_process({"LOCAL_RANK": "0", "NODE_RANK": "1"})
    assert is_rank_zero_process(slurm_env(1, 2, SLURM_PROCID="0"))
    assert not is_rank_zero_process(slurm_env(1, 2, SLURM_PROCID="1"))


@pytest.mark.slow
def test_two_gloo_processes_train_and_only_rank_zero_writes(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "trainer=ddp_cpu", *TINY, "trainer.max_steps=3",
         "trainer.enable_progress_bar=false", "callbacks.best_checkpoint=null", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env={**os.environ, "PRISM_LOG_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Rank 0 of 2 finished at step 3" in output and "Rank 1 of 2 finished at step 3" in output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert len(list(run_dir.glob("csv/version_*"))) == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["SynthDataModule"]["batches_consumed"] == 3


# ---------------------------------------------------------------------- preprocessing array
def run_preprocess_array(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run slurm/preprocess_array.sbatch's body with a ``prism`` stub that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "prism").write_text('#!/bin/sh\necho "prism $*"\n')
    (bin_dir / "prism").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PRISM_"))}
    full = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_CPUS_PER_TASK": "8", **env}
    return subprocess.run(["bash", str(ROOT / "slurm" / "preprocess_array.sbatch"), "all.parquet", "/store", "--spacing", "1", "1", "1"],
                          env=full, capture_output=True, text=True, timeout=30)


def array_env(task: int, first: int, last: int) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(last),
            "SLURM_ARRAY_TASK_COUNT": str(last - first + 1), "SLURM_ARRAY_JOB_ID": "9"}


def test_preprocess_array_runs_one_shard_per_task(tmp_path):
    result = run_preprocess_array(tmp_path, array_env(3, 0, 15))
    assert result.returncode == 0, result.stderr
    assert "prism preprocess all.parquet --out /store --shard 3/16 --workers 8 --spacing 1 1 1" in result.stdout


def test_preprocess_array_refuses_an_array_that_is_not_zero_based_unless_told_the_shard_count(tmp_path):
    result = run_preprocess_array(tmp_path, array_env(1, 1, 16))
    assert result.returncode == 2 and "use --array=0-<N-1>, or set PRISM_NUM_SHARDS" in result.stderr
    rerun = run_preprocess_array(tmp_path, {**array_env(7, 3, 7), "SLURM_ARRAY_TASK_COUNT": "2", "PRISM_NUM_SHARDS": "16"})
    assert rerun.returncode == 0 and "--shard 7/16" in rerun.stdout
    outside = run_preprocess_array(tmp_path, {"SLURM_ARRAY_TASK_ID": "0"})
    assert outside.returncode == 2 and "SLURM_ARRAY_TASK_COUNT is not set: submit as a job array" in outside.stderr


def test_sigterm_saves_a_checkpoint_without_requeue_and_stops(tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from prism.training.run import build, train

    overrides = TINY + ["trainer.max_steps=6", "trainer.val_check_interval=100", "callbacks.last_checkpoint.every_n_train_steps=100"]
    cfg = compose_cfg(overrides, tmp_path)
    handler_before = signal.getsignal(signal.SIGTERM)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(SendSignalAt(step=2, signum=signal.SIGTERM))
    try:
        train(cfg, datamodule, module, trainer)
    except SIGTERMException:
        pass  # Lightning stops the loop itself on SIGTERM
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    saved = list((tmp_path / "checkpoints").glob("hpc_ckpt_*.ckpt"))
    assert len(saved) == 1 and trainer.global_step < 6
    assert torch.load(saved[0], weights_only=True)["global_step"] == trainer.global_step
