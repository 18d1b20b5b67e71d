#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (for tests and CI).
#
# Usage: sudo scripts/slurm-start.sh        (root; Debian/Ubuntu)
#   Installs (if missing) slurmctld slurmd slurm-client munge slurmdbd mariadb-server, then
#   starts munged, MariaDB (127.0.0.1), slurmdbd, slurmctld and slurmd, registers cluster
#   "localci", account "ci" and the users root + the invoking user, and waits until the node
#   is idle. Idempotent: if the cluster it started is still up, it says so and exits 0.
#   Stop it with scripts/slurm-stop.sh, which stops only the daemons this script started.
# Environment (defaults in scripts/slurm-env.sh): MEDTRAVERSE_SLURM_STATE (state folder,
#   default /tmp/medtraverse-slurm), MEDTRAVERSE_SLURM_DB_PORT (3307), MEDTRAVERSE_SLURM_USERS,
#   MEDTRAVERSE_SLURM_TIMEOUT (60 s per wait).
# /etc/slurm and /etc/munge are machine-wide: one such cluster per machine at a time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/slurm-env.sh
source "$HERE/slurm-env.sh"

STATE="$MEDTRAVERSE_SLURM_STATE"
RUN="$STATE/run"
LOG="$STATE/log"
STARTED="$STATE/started"
TIMEOUT="$MEDTRAVERSE_SLURM_TIMEOUT"
T0=$SECONDS

[[ $EUID -eq 0 ]] || slurm_die "run as root (it installs packages, writes /etc/slurm and starts daemons)"

# wait_for WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds or TIMEOUT passes.
wait_for() {
  local what="$1" deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || slurm_die "timed out after ${TIMEOUT}s waiting for $what (logs: $LOG; scripts/slurm-stop.sh stops what started)"
    sleep 0.2
  done
}

# --- already running? --------------------------------------------------------------------
all_started_alive() {
  [[ -s "$STARTED" ]] || return 1
  local name
  while read -r name; do
    slurm_pid_alive "$name" "$RUN/$name.pid" || return 1
  done <"$STARTED"
}
if all_started_alive && timeout 10 sinfo -h >/dev/null 2>&1; then
  slurm_log "already running (state $STATE; daemons: $(tr '\n' ' ' <"$STARTED"))"
  exit 0
fi
if [[ -s "$STARTED" ]]; then
  slurm_log "stale state in $STATE: stopping what is left of the previous start"
  "$HERE/slurm-stop.sh"
fi

# --- packages ----------------------------------------------------------------------------
need_install=0
for bin in slurmctld slurmd slurmdbd sbatch sacctmgr munged mariadbd mariadb-install-db mariadb; do
  command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] || need_install=1
done
if ((need_install)); then
  slurm_log "installing slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
  t=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # Keep apt from starting the services itself (systemd runners): this script starts them.
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  mkdir -p "$LOG"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server; } >"$LOG/apt.log" 2>&1; then
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    tail -20 "$LOG/apt.log" >&2
    slurm_die "apt-get install failed (log: $LOG/apt.log)"
  fi
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  slurm_log "installed in $((SECONDS - t)) s"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- refuse to fight another cluster -----------------------------------------------------
for d in slurmctld slurmd slurmdbd; do
  pid="$(slurm_live_pids "$d" | head -1)"
  if [[ -n "$pid" ]]; then
    slurm_die "$d is already running (pid $pid) but was not started from $STATE; /etc/slurm is machine-wide, so stop that cluster first"
  fi
done
if (exec 3<>"/dev/tcp/127.0.0.1/$MEDTRAVERSE_SLURM_DB_PORT") 2>/dev/null; then
  slurm_die "port $MEDTRAVERSE_SLURM_DB_PORT is taken; set MEDTRAVERSE_SLURM_DB_PORT to a free port"
fi

mkdir -p "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
: >"$STARTED"
record() { echo "$1" >>"$STARTED"; }

# --- munge -------------------------------------------------------------------------------
mkdir -p /run/munge
chown munge:munge /run/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  slurm_log "munged already running: using it (it will be left running)"
else
  [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create >/dev/null 2>&1 || true; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  rm -f "$RUN/munged.pid"
  touch "$RUN/munged.pid" "$LOG/munged.log"
  chown munge:munge "$RUN/munged.pid" "$LOG/munged.log"
  chmod 755 "$STATE" "$RUN"
  runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log"
  wait_for "munged" bash -c 'munge -n | unmunge'
  record munged
  slurm_log "munged up"
fi

# --- MariaDB (private data folder, 127.0.0.1 only) ----------------------------------------
DB="$STATE/mysql"
SOCK="$RUN/mariadb.sock"
if [[ ! -d "$DB/mysql" ]]; then
  rm -rf "$DB"
  mariadb-install-db --no-defaults --datadir="$DB" --user=root --skip-test-db \
    --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
    slurm_die "mariadb-install-db failed (log: $LOG/mariadb-install.log)"
fi
rm -f "$RUN/mariadb.pid"
# setsid + </dev/null: detached, so no pipe of the caller stays open on it.
setsid /usr/sbin/mariadbd --no-defaults --datadir="$DB" --user=root \
  --bind-address=127.0.0.1 --port="$MEDTRAVERSE_SLURM_DB_PORT" --socket="$SOCK" \
  --pid-file="$RUN/mariadb.pid" --skip-name-resolve --log-error="$LOG/mariadb.log" \
  --innodb-buffer-pool-size=64M </dev/null >>"$LOG/mariadb.log" 2>&1 &
wait_for "MariaDB" test -S "$SOCK" -a -s "$RUN/mariadb.pid"
wait_for "MariaDB" mariadb-admin --no-defaults --socket="$SOCK" -u root ping
record mariadb
slurm_log "MariaDB up on 127.0.0.1:$MEDTRAVERSE_SLURM_DB_PORT"

DBPASS_FILE="$STATE/db-password"
if [[ ! -s "$DBPASS_FILE" ]]; then
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DBPASS_FILE")
fi
DBPASS="$(cat "$DBPASS_FILE")"
mariadb --no-defaults --socket="$SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- SLURM configuration -----------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
mkdir -p "$SLURM_CONF_DIR"
cat >"$SLURM_CONF" <<CONF
# Written by medtraverse scripts/slurm-start.sh: a single-node cluster for tests and CI.
ClusterName=$MEDTRAVERSE_SLURM_CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120): keep the
# requeue test short. Step credentials must still outlive a slow step launch on a loaded CI box.
AuthInfo=cred_expire=15
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# sched_interval=2: a requeued job becomes eligible by time and waits for the main
# scheduling pass (default every 60 s).
SchedulerParameters=batch_sched_delay=0,sched_interval=2
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$MEDTRAVERSE_SLURM_PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
(
  umask 077
  cat >"$SLURM_CONF_DIR/slurmdbd.conf" <<CONF
# Written by medtraverse scripts/slurm-start.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MEDTRAVERSE_SLURM_DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
CONF
)
chmod 600 "$SLURM_CONF_DIR/slurmdbd.conf"

# --- slurmdbd, accounting, slurmctld, slurmd ----------------------------------------------
rm -f "$RUN/slurmdbd.pid" "$RUN/slurmctld.pid" "$RUN/slurmd.pid"
/usr/sbin/slurmdbd
wait_for "slurmdbd pid file" test -s "$RUN/slurmdbd.pid"
record slurmdbd
wait_for "slurmdbd" sacctmgr -n list cluster
slurm_log "slurmdbd up"

# Register the cluster, account and users before slurmctld starts, so it finds its
# associations (AccountingStorageEnforce=associations) on first contact.
has() { [[ -n "$(sacctmgr -n -P "$@" 2>/dev/null)" ]]; }
has list cluster "$MEDTRAVERSE_SLURM_CLUSTER" format=cluster ||
  sacctmgr -i add cluster "$MEDTRAVERSE_SLURM_CLUSTER" >/dev/null
has list account "$MEDTRAVERSE_SLURM_ACCOUNT" format=account ||
  sacctmgr -i add account "$MEDTRAVERSE_SLURM_ACCOUNT" cluster="$MEDTRAVERSE_SLURM_CLUSTER" \
    description="medtraverse CI" organization=medtraverse >/dev/null
users="root ${SUDO_USER:-} $(id -un) $MEDTRAVERSE_SLURM_USERS"
for u in $(printf '%s\n' $users | sort -u); do
  has list assoc user="$u" account="$MEDTRAVERSE_SLURM_ACCOUNT" \
    cluster="$MEDTRAVERSE_SLURM_CLUSTER" format=user ||
    sacctmgr -i add user "$u" account="$MEDTRAVERSE_SLURM_ACCOUNT" \
      cluster="$MEDTRAVERSE_SLURM_CLUSTER" defaultaccount="$MEDTRAVERSE_SLURM_ACCOUNT" >/dev/null
done
slurm_log "accounting: cluster $MEDTRAVERSE_SLURM_CLUSTER, account $MEDTRAVERSE_SLURM_ACCOUNT, users $(printf '%s\n' $users | sort -u | tr '\n' ' ')"

/usr/sbin/slurmctld
wait_for "slurmctld pid file" test -s "$RUN/slurmctld.pid"
record slurmctld
wait_for "slurmctld" scontrol ping
slurm_log "slurmctld up"

/usr/sbin/slurmd
wait_for "slurmd pid file" test -s "$RUN/slurmd.pid"
record slurmd
node_idle() { [[ "$(sinfo -h -n "$HOST" -o %t 2>/dev/null)" == idle ]]; }
wait_for "node $HOST to be idle" node_idle
slurm_log "node $HOST idle ($CPUS CPUs, ${MEM_MB} MiB); partition $MEDTRAVERSE_SLURM_PARTITION; started in $((SECONDS - T0)) s"
slurm_log "stop with scripts/slurm-stop.sh"
