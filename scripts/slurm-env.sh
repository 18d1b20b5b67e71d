# Shared settings of the local single-node SLURM cluster (sourced by slurm-start.sh and
# slurm-stop.sh; tests read the same environment variables).
# Every value can be overridden from the environment before calling the scripts.

# Where the cluster keeps its state, spool, pid files, logs and the MariaDB data.
MEDTRAVERSE_SLURM_STATE="${MEDTRAVERSE_SLURM_STATE:-/tmp/medtraverse-slurm}"
# Accounting names the profiles/slurm-ci profile and the tests submit with.
MEDTRAVERSE_SLURM_CLUSTER="${MEDTRAVERSE_SLURM_CLUSTER:-localci}"
MEDTRAVERSE_SLURM_ACCOUNT="${MEDTRAVERSE_SLURM_ACCOUNT:-ci}"
MEDTRAVERSE_SLURM_PARTITION="${MEDTRAVERSE_SLURM_PARTITION:-debug}"
# Extra users to add to the account (space separated); root and the invoking user always are.
MEDTRAVERSE_SLURM_USERS="${MEDTRAVERSE_SLURM_USERS:-}"
# MariaDB listens on 127.0.0.1 only; 3307 so a system MariaDB on 3306 is left alone.
MEDTRAVERSE_SLURM_DB_PORT="${MEDTRAVERSE_SLURM_DB_PORT:-3307}"
# Seconds to wait for each daemon, and for the node to turn idle.
MEDTRAVERSE_SLURM_TIMEOUT="${MEDTRAVERSE_SLURM_TIMEOUT:-60}"

# /etc/slurm and /etc/munge are machine-wide: one cluster per machine at a time.
SLURM_CONF_DIR=/etc/slurm
export SLURM_CONF="$SLURM_CONF_DIR/slurm.conf"

# The daemons, in start order; stop goes in reverse. Each maps to the process name (comm)
# checked before a pid from a pid file is signalled, so a recycled pid is never killed.
MEDTRAVERSE_SLURM_DAEMONS=(munged mariadb slurmdbd slurmctld slurmd)
declare -A MEDTRAVERSE_SLURM_COMM=(
  [munged]=munged [mariadb]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld [slurmd]=slurmd
)

slurm_log() { printf 'slurm: %s\n' "$*"; }
slurm_die() { printf 'slurm: error: %s\n' "$*" >&2; exit 1; }

# slurm_pid_of PIDFILE: the pid in PIDFILE, or nothing (the daemon may remove it as it exits).
slurm_pid_of() { cat "$1" 2>/dev/null | tr -dc '0-9' || true; }

# slurm_live_pids COMM: pids of live (not zombie) processes named COMM.
slurm_live_pids() {
  local pid
  for pid in $(pgrep -x "$1" || true); do
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[RSDTI]$ ]] && echo "$pid"
  done
  return 0
}

# pid_alive NAME PIDFILE: true when PIDFILE names a live process whose comm is NAME's.
slurm_pid_alive() {
  local name="$1" pidfile="$2" pid comm
  pid="$(slurm_pid_of "$pidfile")"
  [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
  [[ "$comm" == "${MEDTRAVERSE_SLURM_COMM[$name]}" ]] || return 1
  # A zombie (exited, not yet reaped by a container's init) counts as stopped.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}
