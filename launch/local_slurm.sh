#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian slurm-wlm + munge), for CI and laptop tests.
#
#   sudo launch/local_slurm.sh          # install if needed, configure, start; waits until the node is idle
#   launch/local_slurm.sh --status      # sinfo
#
# Idempotent: packages, the munge key and slurm.conf are made once; running daemons are left running.
# Settings that work without cgroups (see DESIGN.md): SlurmUser=root, proctrack/linuxproc, task/none,
# select/cons_tres, one partition "debug" with this host's CPUs and memory. Job accounting runs through
# slurmdbd on a local MariaDB: NeMo-Run's SlurmExecutor reads job states with `sacct`, which answers
# nothing without accounting storage (it then gives up after ~30 failed polls, mid-job).
set -euo pipefail
if [[ "${1:-}" == "--status" ]]; then exec sinfo; fi
[[ "$(id -u)" -eq 0 ]] || { echo "local_slurm.sh: needs root (apt-get, daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v mariadbd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge /etc/munge

if [[ ! -s /etc/munge/munge.key ]]; then
  if command -v mungekey >/dev/null; then mungekey -c -f -k /etc/munge/munge.key; else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key

CONF="$CONF_DIR/slurm.conf"
WANT="$(cat <<CONF
ClusterName=nemo-subnet-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
)"
RESTART=0
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$WANT" ]]; then echo "$WANT" > "$CONF"; RESTART=1; fi

pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged" || munged --force

# accounting: MariaDB -> slurmdbd -> the cluster registered, before slurmctld starts
mysqladmin ping >/dev/null 2>&1 || service mariadb start >/dev/null
for _ in $(seq 1 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbd-local';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
cat > "$DBD_CONF" <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbd-local
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
DBD
chmod 0600 "$DBD_CONF"
pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 1; done
sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx nemo-subnet-ci \
  || sacctmgr -i add cluster nemo-subnet-ci >/dev/null
if [[ "$RESTART" -eq 1 ]]; then
  pkill -x slurmctld 2>/dev/null || true; pkill -x slurmd 2>/dev/null || true; sleep 1
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true)"
  case "$state" in
    idle|mixed|allocated) echo "local SLURM ready: node $HOST $state, partition debug"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "local_slurm.sh: node $HOST not idle after 60 s (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
