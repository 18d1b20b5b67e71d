#!/usr/bin/env bash
# Stop the local SLURM cluster that scripts/slurm-start.sh started.
#
# Usage: sudo scripts/slurm-stop.sh
#   Stops, in reverse start order, only the daemons recorded in $MEDTRAVERSE_SLURM_STATE/started
#   (a munged or MariaDB that was running before the start script is left alone), and waits
#   for each to exit (SIGTERM, then SIGKILL after MEDTRAVERSE_SLURM_STOP_TIMEOUT, default 30 s).
#   The state folder (job state, accounting database, logs) is kept, so the next start is
#   quicker; delete it for a clean slate. Exits 0 when nothing was running.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/slurm-env.sh
source "$HERE/slurm-env.sh"

STATE="$MEDTRAVERSE_SLURM_STATE"
RUN="$STATE/run"
STARTED="$STATE/started"
STOP_TIMEOUT="${MEDTRAVERSE_SLURM_STOP_TIMEOUT:-30}"
T0=$SECONDS

if [[ ! -s "$STARTED" ]]; then
  slurm_log "nothing to stop (no daemons recorded in $STARTED)"
  exit 0
fi

# Reverse start order: slurmd, slurmctld, slurmdbd, MariaDB, munged.
mapfile -t names < <(tac "$STARTED")
for name in "${names[@]}"; do
  pidfile="$RUN/$name.pid"
  if ! slurm_pid_alive "$name" "$pidfile"; then
    slurm_log "$name: not running"
    continue
  fi
  pid="$(slurm_pid_of "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while slurm_pid_alive "$name" "$pidfile" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if slurm_pid_alive "$name" "$pidfile"; then
    slurm_log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  slurm_log "$name stopped (pid $pid)"
done
rm -f "$STARTED"
slurm_log "stopped in $((SECONDS - T0)) s"
