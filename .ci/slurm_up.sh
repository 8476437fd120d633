#!/usr/bin/env bash
# Install (if missing) and start a one-node SLURM cluster on this machine, for `pytest -m slurm`.
#
#   bash .ci/slurm_up.sh      # idempotent: does nothing but wait for the node when already up
#   bash .ci/slurm_down.sh    # stops exactly the daemons this script started
#
# Debian's slurm-wlm + munge, run as root. All state (configs, spool, logs, pid files) lives in
# $PRISM_SLURM_DIR (default /tmp/prism-slurm); /etc/slurm/slurm.conf is a symlink to its
# slurm.conf so that sbatch/squeue find it without SLURM_CONF. An existing /etc/slurm/slurm.conf
# that is not ours is left alone (export SLURM_CONF=$PRISM_SLURM_DIR/slurm.conf then).
#
# Short requeue delay: a requeued job may not start again before the credential lifetime
# (AuthInfo cred_expire, default 120 s) has passed; this test cluster sets it to
# $PRISM_SLURM_CRED_EXPIRE (default 30 s) and runs the main scheduler every 5 s.
set -euo pipefail

STATE=${PRISM_SLURM_DIR:-/tmp/prism-slurm}
CRED_EXPIRE=${PRISM_SLURM_CRED_EXPIRE:-30}
TIMEOUT=${PRISM_SLURM_UP_TIMEOUT:-90}
say() { echo "slurm_up: $*"; }
die() { echo "slurm_up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged/slurmctld/slurmd)."

# --------------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge with apt-get (about 30 s)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
    apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi

mkdir -p "$STATE"/{spool/ctld,spool/d,log,run}
CONF="$STATE/slurm.conf"

# ------------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating a munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
# alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME. A pid file left by
# daemons that were killed (the end of an earlier session) may name a zombie or a reused pid; a
# plain `kill -0` would take either for the daemon and skip starting it.
alive() {
    local pid comm state
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ -r "/proc/$pid/stat" ] || return 1
    read -r _ comm state _ <"/proc/$pid/stat" || return 1
    [ "$comm" = "($2)" ] && [ "$state" != Z ]
}
if alive "$STATE/run/munged.pid" munged; then
    say "munged already running (pid $(cat "$STATE/run/munged.pid"))"
elif alive /run/munge/munged.pid munged; then  # started by someone else: use it, and leave it running on slurm_down
    say "using the munged that was already running (pid $(cat /run/munge/munged.pid))"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --log-file=/var/log/munge/munged.log || die "munged did not start; see /var/log/munge/munged.log"
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/run/munged.pid" || die "munged wrote no pid file; see /var/log/munge/munged.log"
    say "munged started (pid $(cat "$STATE/run/munged.pid"))"
fi
munge -n | unmunge >/dev/null || die "munge round trip failed (key or /run/munge permissions)"

# ------------------------------------------------------------------- slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))   # 80% of RAM
cat >"$CONF.tmp" <<EOF
# One-node test cluster written by .ci/slurm_up.sh (do not edit: it is rewritten on every start).
ClusterName=prism-ci
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=300
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
mv "$CONF.tmp" "$CONF"
mkdir -p /etc/slurm
if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$(readlink -f "$CONF")" ]; then
    say "warning: /etc/slurm/slurm.conf exists and is not ours; export SLURM_CONF=$CONF before using sbatch"
    export SLURM_CONF=$CONF
fi

# ---------------------------------------------------------------------- daemons
if alive "$STATE/run/slurmctld.pid" slurmctld; then
    say "slurmctld already running (pid $(cat "$STATE/run/slurmctld.pid"))"
else
    # -c: a freshly started controller forgets the jobs and node states saved by an earlier one,
    # whose job processes are gone (a saved "idle" node with no slurmd behind it queues jobs forever).
    slurmctld -f "$CONF" -c -i || die "slurmctld did not start; see $STATE/log/slurmctld.log"
fi
if alive "$STATE/run/slurmd.pid" slurmd; then
    say "slurmd already running (pid $(cat "$STATE/run/slurmd.pid"))"
else
    slurmd -f "$CONF" || die "slurmd did not start; see $STATE/log/slurmd.log"
fi

# ------------------------------------------------------------ wait for the node
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    node_state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$node_state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        die "node $HOST not idle after ${TIMEOUT}s (state '${node_state:-no answer}'); see $STATE/log/slurmctld.log and slurmd.log"
    fi
    sleep 1
done
say "cluster up: node $HOST ($CPUS CPUs, ${MEM_MB} MB) is $node_state; config $CONF"
# A job must really run: the node may look idle to the controller while no slurmd serves it.
srun --quiet --time=1 -n 1 true >/dev/null 2>&1 &
probe=$!
for _ in $(seq 60); do kill -0 "$probe" 2>/dev/null || break; sleep 1; done
if kill -0 "$probe" 2>/dev/null; then
    kill "$probe" 2>/dev/null
    die "a 1-task test job did not finish in 60 s; see $STATE/log/slurmctld.log and slurmd.log, and 'squeue -o \"%i %T %r\"'"
fi
wait "$probe" || die "a 1-task test job failed; see $STATE/log/slurmd.log"
say "a test job ran"
