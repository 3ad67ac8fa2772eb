#!/usr/bin/env bash
# A real SLURM cluster on this machine (Debian slurm-wlm + munge), for CI and laptop tests: node <host> in the
# default partition "debug" (one-node jobs), and two more nodes <host>-n1, <host>-n2 in partition "two"
# (`sbatch -p two --nodes=2`), each served by its own slurmd (`slurmd -N <name>`, own port, own spool and log)
# at its own loopback address (127.0.0.2, 127.0.0.3), so multi-node jobs run here for real.
#
#   sudo launch/local_slurm.sh          # install if needed, configure, start; waits until the node is idle
#   launch/local_slurm.sh --status      # sinfo
#
# Idempotent: packages, the munge key and slurm.conf are made once; running daemons are left running.
# Settings that work without cgroups (see DESIGN.md): SlurmUser=root, proctrack/linuxproc, task/none,
# select/cons_tres, each node with this host's CPUs and memory (all three share them: a test cluster). Job accounting runs through
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
NODES=("$HOST" "$HOST-n1" "$HOST-n2")
mkdir -p "$CONF_DIR" /var/spool/slurmctld "${NODES[@]/#//var/spool/slurmd/}" /var/log/slurm /run/munge /var/lib/munge /var/log/munge /etc/munge

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
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=$HOST-n1 NodeHostname=$HOST NodeAddr=127.0.0.2 Port=6821 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=$HOST-n2 NodeHostname=$HOST NodeAddr=127.0.0.3 Port=6822 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=two Nodes=$HOST-n1,$HOST-n2 MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
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
  pkill -x slurmctld 2>/dev/null || true; pkill -x slurmd 2>/dev/null || true
  for _ in $(seq 1 30); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 1; done
fi
pgrep -x slurmctld >/dev/null || slurmctld
for node in "${NODES[@]}"; do  # one slurmd per node entry
  pgrep -f "^slurmd -N $node\$" >/dev/null || slurmd -N "$node"
done

ready=()
for _ in $(seq 1 60); do
  ready=()
  for node in "${NODES[@]}"; do
    state="$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)"
    case "$state" in
      idle|mixed|allocated) ready+=("$node") ;;
      down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
  done
  if [[ "${#ready[@]}" -eq "${#NODES[@]}" ]]; then
    echo "local SLURM ready: node $HOST (partition debug), nodes $HOST-n1,$HOST-n2 (partition two)"; exit 0
  fi
  sleep 1
done
echo "local_slurm.sh: nodes not idle after 60 s (ready: ${ready[*]:-none} of ${NODES[*]}); see /var/log/slurm/" >&2
exit 1
