"""Pretraining under a real SLURM: 2-task gloo DDP, preemption signal, requeue and exact resume.

Needs a running cluster (``bash .ci/slurm_up.sh`` starts a one-node one here; ``.ci/run`` does
it before ``pytest -m slurm``). Each test submits ``slurm/cpu_ddp.sbatch`` (2 tasks, one per
CPU) from the repository root with a tiny network, so the job script, ``slurm/launch.sh``,
``srun``, Lightning's SLURMEnvironment and ``prism.training`` are all exercised as a user's job.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sbatch") is None or shutil.which("sinfo") is None,
        reason="no SLURM client (sbatch/sinfo) on PATH: start the test cluster with `bash .ci/slurm_up.sh`",
    ),
]

# A tiny network, no validation, one checkpoint callback (last.ckpt at the end), CSV logs.
TINY = [
    "+debug=fast_dev_run", "logger=csv", "trainer.fast_dev_run=false", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000", "callbacks.best_checkpoint=null",
    "callbacks.reconstruction_preview=null", "callbacks.last_checkpoint.every_n_train_steps=1000",
]
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module", autouse=True)
def cluster_is_up():
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = result.stdout.split()
    if result.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        pytest.skip(f"SLURM answers but no node is usable (sinfo: {result.stdout.strip() or result.stderr.strip()}); "
                    "run `bash .ci/slurm_up.sh`")


def submit(log_dir: Path, *overrides: str) -> tuple[str, Path]:
    """Submit slurm/cpu_ddp.sbatch from the repository root; returns (job id, its output file)."""
    env = dict(os.environ, PRISM_LOG_DIR=str(log_dir), PRISM_PYTHON=sys.executable, WANDB_MODE="offline")
    env.pop("PRISM_RUN_NAME", None)
    log_dir.mkdir(parents=True, exist_ok=True)  # sbatch cannot launch a job whose output folder is missing
    output = log_dir / "job-%j.out"
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={output}", "slurm/cpu_ddp.sbatch", *TINY, *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    return job_id, log_dir / f"job-{job_id}.out"


def job_fields(job_id: str) -> dict[str, str]:
    result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout))


def cluster_diagnosis(job_id: str) -> str:
    """What a person would look at when a job does not run: its state and reason, the node, the daemons' logs."""
    fields = job_fields(job_id)
    lines = [f"job {job_id}: JobState={fields.get('JobState')} Reason={fields.get('Reason')} NodeList={fields.get('NodeList')}"]
    for command in (["sinfo", "-N", "-o", "%N %T %E"], ["squeue", "-o", "%i %T %r %M"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        lines.append(f"$ {' '.join(command)}\n{result.stdout.strip()}{result.stderr.strip()}")
    state_dir = Path(os.environ.get("PRISM_SLURM_DIR", "/tmp/prism-slurm")) / "log"
    for name in ("slurmctld.log", "slurmd.log"):
        path = state_dir / name
        if path.exists():
            lines.append(f"--- last lines of {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(lines)


def wait_until_done(job_id: str, output: Path, timeout_s: float) -> dict[str, str]:
    """Poll the job until it ends (a requeued job passes through PENDING and RUNNING again)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") in TERMINAL_STATES:
            return fields
        time.sleep(2)
    diagnosis = cluster_diagnosis(job_id)
    subprocess.run(["scancel", job_id], timeout=30)
    log = output.read_text() if output.exists() else "(no output file)"
    pytest.fail(f"job {job_id} did not finish in {timeout_s:.0f} s; output:\n{log[-3000:]}\n{diagnosis}")


def wait_for_text(output: Path, pattern: str, timeout_s: float, job_id: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if output.exists() and re.search(pattern, output.read_text()):
            return
        time.sleep(0.5)
    log = output.read_text()[-3000:] if output.exists() else "(no output file)"
    pytest.fail(f"'{pattern}' did not appear in {output} within {timeout_s:.0f} s; output:\n{log}\n{cluster_diagnosis(job_id)}")


def wait_for_logged_step(run: Path, step: int, timeout_s: float, job_id: str) -> None:
    """Wait until the run's CSV log has a row at or after ``step`` (train/loss is logged every step)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for metrics in run.glob("csv/version_*/metrics.csv"):
            with metrics.open(newline="") as handle:
                logged = [int(row["step"]) for row in csv.DictReader(handle) if row.get("step")]
            if logged and max(logged) >= step:
                return
        time.sleep(0.2)
    pytest.fail(f"{run} logged no step >= {step} within {timeout_s:.0f} s\n{cluster_diagnosis(job_id)}")


def run_dir(log_dir: Path, job_id: str) -> Path:
    return log_dir / "pretrain" / "runs" / job_id  # conf/hydra/default.yaml: the SLURM job id


def test_two_task_job_trains_on_both_ranks_and_rank_zero_writes_one_checkpoint(tmp_path):
    job_id, output = submit(tmp_path, "trainer.max_steps=4")
    fields = wait_until_done(job_id, output, timeout_s=180)
    log = output.read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert "1 node(s) x 2 task(s), trainer=ddp_cpu" in log
    assert "World size 2 (1 node(s) x 2 device(s))" in log
    for rank in (0, 1):
        assert f"Rank {rank} of 2 finished at step 4" in log, log[-3000:]
    checkpoints = sorted(p.name for p in (run_dir(tmp_path, job_id) / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]  # written by rank zero only, no temporary files left
    state = torch.load(run_dir(tmp_path, job_id) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and state["SynthDataModule"]["batches_consumed"] == 4
    assert len(list(run_dir(tmp_path, job_id).glob("csv/version_*/metrics.csv"))) == 1


def test_preempted_job_requeues_resumes_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    steps = 40
    preempted_dir, reference_dir = tmp_path / "preempted", tmp_path / "reference"
    # metrics.csv flushed every step: the test signals once training is a few steps in, however
    # fast or slow this machine is (a fixed sleep either lands after the end or before the start).
    job_id, output = submit(preempted_dir, f"trainer.max_steps={steps}", "++logger.csv.flush_logs_every_n_steps=1")
    wait_for_text(output, r"Optimizer lr", timeout_s=180, job_id=job_id)  # training has started on both ranks
    wait_for_logged_step(run_dir(preempted_dir, job_id), step=3, timeout_s=120, job_id=job_id)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)  # SLURM's warning signal
    # The uninterrupted run queues behind it (both need the node's 2 CPUs).
    reference_id, reference_output = submit(reference_dir, f"trainer.max_steps={steps}")

    fields = wait_until_done(job_id, output, timeout_s=300)
    log = output.read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    assert int(fields["Restarts"]) == 1, log[-4000:]
    saved = re.search(r"SIGUSR1: saved \S+hpc_ckpt_(\d+)\.ckpt at step (\d+)", log)
    assert saved, log[-4000:]
    saved_step = int(saved.group(1))
    assert 0 < saved_step < steps and int(saved.group(2)) == saved_step
    assert f"Requeued SLURM job {job_id}" in log
    assert "(restart 1)" in log
    assert re.search(rf"Resuming from \S+/runs/{job_id}/checkpoints/hpc_ckpt_{saved_step}\.ckpt", log), log[-4000:]
    assert f"Rank 0 of 2 finished at step {steps}" in log.split("(restart 1)")[1]

    reference_fields = wait_until_done(reference_id, reference_output, timeout_s=180)
    assert reference_fields["JobState"] == "COMPLETED", reference_output.read_text()[-3000:]
    preempted = torch.load(run_dir(preempted_dir, job_id) / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(run_dir(reference_dir, reference_id) / "checkpoints" / "last.ckpt", weights_only=True)
    assert preempted["global_step"] == reference["global_step"] == steps
    assert preempted["SynthDataModule"]["batches_consumed"] == reference["SynthDataModule"]["batches_consumed"] == steps
    for name, tensor in reference["state_dict"].items():  # same data, masks and updates: the same weights
        torch.testing.assert_close(preempted["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
