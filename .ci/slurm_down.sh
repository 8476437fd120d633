#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm_up.sh started: slurmd, slurmctld, munged,
# each by the process id in its pid file (never by name). Idempotent; jobs still running
# are cancelled first. The state folder is kept (logs) unless PRISM_SLURM_CLEAN=1.
set -uo pipefail

STATE=${PRISM_SLURM_DIR:-/tmp/prism-slurm}
say() { echo "slurm_down: $*"; }

if [ -s "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
fi

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || { say "$name: not started here"; return 0; }
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        say "$name (pid $pid) stopped"
    else
        say "$name (pid $pid) was not running"
    fi
    rm -f "$pidfile"
}

stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop munged "$STATE/run/munged.pid"
if [ "${PRISM_SLURM_CLEAN:-0}" = 1 ]; then
    [ "$(readlink -f /etc/slurm/slurm.conf 2>/dev/null)" = "$(readlink -f "$STATE/slurm.conf" 2>/dev/null)" ] && rm -f /etc/slurm/slurm.conf
    rm -rf "$STATE"
    say "removed $STATE"
fi
exit 0
