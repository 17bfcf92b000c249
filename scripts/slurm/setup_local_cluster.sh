#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying scripts/slurm/train.sbatch and for CI.
#   sudo bash scripts/slurm/setup_local_cluster.sh      # then: srun -n2 hostname; sbatch ...
# Debian/Ubuntu, root, no systemd needed: installs slurm-wlm + munge (apt), writes a munge key if
# there is none and a slurm.conf for one node (this host, CPUs=$(nproc)), starts munged, slurmctld
# and slurmd by hand, and waits until `srun -n2 hostname` works. Idempotent: a second run with the
# daemons up and the same config only checks the cluster. A slurm.conf this script did not write is
# left alone (the script stops and says so). Env: SLURM_SETUP_TIMEOUT (seconds, default 60).
set -euo pipefail

MARK="# written by scaleout scripts/slurm/setup_local_cluster.sh"
CONF=/etc/slurm/slurm.conf
TIMEOUT=${SLURM_SETUP_TIMEOUT:-60}
STATE=/var/lib/slurm
LOGDIR=/var/log/slurm

die() { echo "setup_local_cluster: ERROR: $*" >&2; exit 1; }
say() { echo "setup_local_cluster: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# 1. packages ---------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || die "slurm/munge are not installed and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists only when they do not know the packages yet.
  if ! apt-cache policy slurm-wlm 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    say "apt-get update"
    apt-get update -q || die "apt-get update failed"
  fi
  say "apt-get install slurm-wlm munge"
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/tmp/scaleout-slurm-apt.log 2>&1 \
    || { tail -20 /tmp/scaleout-slurm-apt.log >&2; die "apt-get install slurm-wlm munge failed (log: /tmp/scaleout-slurm-apt.log)"; }
fi
for b in munged slurmctld slurmd sbatch srun scontrol sinfo; do
  command -v "$b" >/dev/null || die "'$b' not found after installing slurm-wlm and munge"
done
id munge >/dev/null 2>&1 || die "user 'munge' missing (the munge package creates it)"
id slurm >/dev/null 2>&1 || die "user 'slurm' missing (the slurm-wlm package creates it)"

# 2. munge ------------------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  say "starting munged"
  runuser -u munge -- munged || die "munged failed to start (see /var/log/munge/munged.log)"
  for _ in $(seq 20); do munge_ok && break; sleep 0.5; done
  munge_ok || die "munge does not work: 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf -------------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # nproc obeys OMP_NUM_THREADS otherwise
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # 90%: below what slurmd finds
NEW_CONF=$(cat <<EOF
$MARK
# One node (this host) for local runs and CI. Regenerate by running the script again.
ClusterName=scaleout-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# A requeued job may start again cred_expire seconds later (default 120), when the scheduler next
# looks (SchedulerParameters): both short here, so that tests/test_slurm.py's preempted job resumes
# within seconds. JobRequeue=1: batch jobs may be requeued.
AuthInfo=cred_expire=10
JobRequeue=1
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# No cgroups: containers and machines without systemd often cannot delegate them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; not touching it (move it away to use this script)"
fi
CHANGED=0
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  say "writing $CONF (node $HOST, CPUs=$CPUS, RealMemory=${MEM_MB}M)"
  mkdir -p /etc/slurm
  printf '%s\n' "$NEW_CONF" >"$CONF"
  chmod 0644 "$CONF"
  CHANGED=1
fi
mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$LOGDIR"
chown -R slurm:slurm "$STATE/slurmctld" "$LOGDIR"

# 4. daemons ----------------------------------------------------------------------------------------
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() {  # stop only the daemon this script started (its pid file), never by name
  if pid_alive "$1"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$1"
}
if [ "$CHANGED" = 1 ]; then
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
fi
if ! pid_alive /run/slurmctld.pid; then
  say "starting slurmctld"
  slurmctld || die "slurmctld failed to start (see $LOGDIR/slurmctld.log)"
fi
if ! pid_alive /run/slurmd.pid; then
  say "starting slurmd"
  slurmd || die "slurmd failed to start (see $LOGDIR/slurmd.log)"
fi

# 5. wait until a 2-task step runs ------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
  if scontrol ping >/dev/null 2>&1; then
    state=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true)
    # A node left down/drained by an earlier run (e.g. after a reboot) is put back once.
    if [ "$resumed" = 0 ] && [[ "$state" == down* || "$state" == drain* || "$state" == fail* ]]; then
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    if [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] \
        && out=$(timeout 20 srun -n2 --immediate=10 hostname 2>&1) && [ "$(printf '%s\n' "$out" | wc -l)" = 2 ]; then
      say "cluster up: node $HOST, $CPUS CPUs; 'srun -n2 hostname' works"
      exit 0
    fi
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "--- sinfo:" >&2; sinfo -N -l >&2 2>&1 || true
    echo "--- slurmctld.log (tail):" >&2; tail -n 15 "$LOGDIR/slurmctld.log" >&2 2>/dev/null || true
    echo "--- slurmd.log (tail):" >&2; tail -n 15 "$LOGDIR/slurmd.log" >&2 2>/dev/null || true
    die "the cluster did not run 'srun -n2 hostname' within ${TIMEOUT}s (node state: ${state:-unknown})"
  fi
  sleep 1
done
