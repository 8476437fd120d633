#!/usr/bin/env bash
# The body every slurm/*.sbatch job script runs: check the allocation, then start one training
# process per task with srun (Lightning's SLURMEnvironment reads rank, world size and the
# rendezvous address from the SLURM_* variables srun sets). Not submitted on its own:
#   exec bash slurm/launch.sh <trainer config: ddp | fsdp | ddp_cpu> [Hydra overrides...]
# trainer.num_nodes and trainer.devices come from the allocation; later overrides win
# (e.g. `trainer=fsdp` after the template's `trainer=ddp`). PRISM_PYTHON picks the interpreter.
set -euo pipefail

die() { echo "prism slurm: error: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: bash slurm/launch.sh <trainer> [overrides...] (called by the slurm/*.sbatch scripts)"
TRAINER=$1
shift

for var in SLURM_JOB_ID SLURM_NNODES SLURM_NTASKS SLURM_NTASKS_PER_NODE SLURM_SUBMIT_DIR; do
    [ -n "${!var:-}" ] || die "$var is not set. Submit with sbatch and give --nodes and --ntasks-per-node (one task per GPU), e.g. sbatch slurm/single_node.sbatch +experiment=pretrain"
done
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}   # "8(x2)" -> 8
[ "$SLURM_NTASKS" -eq $(( SLURM_NNODES * TASKS_PER_NODE )) ] \
    || die "SLURM_NTASKS=$SLURM_NTASKS is not --nodes x --ntasks-per-node = $SLURM_NNODES x $TASKS_PER_NODE; request whole nodes with --ntasks-per-node only"
cd "$SLURM_SUBMIT_DIR"
[ -f train.py ] || die "train.py not found in $SLURM_SUBMIT_DIR: submit from the prism checkout"
PYTHON=${PRISM_PYTHON:-python}
command -v "$PYTHON" >/dev/null || die "python '$PYTHON' not found: activate the environment before sbatch or set PRISM_PYTHON"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "prism slurm: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NNODES} node(s) x ${TASKS_PER_NODE} task(s), trainer=${TRAINER}"
# --kill-on-bad-exit: one failing rank ends the step instead of leaving the others in a collective.
# `trap "" USR1 USR2`: a warning signal that arrives while python is still starting (SLURM may
# send it up to a minute early) is ignored instead of killing the task; prism.training.preemption
# takes the signals over once the trainer is built.
exec srun --kill-on-bad-exit=1 bash -c 'trap "" USR1 USR2; exec "$@"' prism-task "$PYTHON" train.py \
    trainer="$TRAINER" trainer.num_nodes="$SLURM_NNODES" trainer.devices="$TASKS_PER_NODE" "$@"
