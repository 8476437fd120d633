#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm_up.sh started: slurmd, slurmctld, munged,
# each by the process id in its pid file (never by name). Idempotent; jobs still running
# are cancelled first. The state folder is kept (logs) unless PRISM_SLURM_CLEAN=1.
set -uo pipefail

STATE=${PRISM_SLURM_DIR:-/tmp/prism-slurm}
say() { echo "slurm_down: $*"; }

# is_daemon PID NAME: PID is a live (not zombie) process called NAME; a stale pid file may name a
# pid that the system has since given to another process, which must not be signalled.
is_daemon() {
    local comm state
    [ -r "/proc/$1/stat" ] || return 1
    read -r _ comm state _ <"/proc/$1/stat" || return 1
    [ "$comm" = "($2)" ] && [ "$state" != Z ]
}

if [ -s "$STATE/run/slurmctld.pid" ] && is_daemon "$(cat "$STATE/run/slurmctld.pid")" slurmctld; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
fi

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || { say "$name: not started here"; return 0; }
    pid=$(cat "$pidfile")
    if is_daemon "$pid" "$name"; then
        kill -TERM "$pid"
        for _ in $(seq 100); do is_daemon "$pid" "$name" || break; sleep 0.1; done
        is_daemon "$pid" "$name" && kill -KILL "$pid"
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
