#!/usr/bin/env bash
# Start a one-node SLURM on this machine for the tests, as a site runs one:
# partitions cpu (default) and gpu, one fake GPU through GRES; accounting in
# slurmdbd on MariaDB (so sacct answers, as the shipped profile's job-status
# check expects, and accounts are enforced: root may charge `root` and `atlasmap`, no other);
# memory requests enforced (a job step over its mem_mb is killed, OUT_OF_MEMORY).
# Needs root. Idempotent: a cluster already up is left as it is.
set -euo pipefail
JOBCOMP=/var/log/slurm/jobcomp.log

# A daemon counts as running unless it is only a zombie left by an earlier run.
running() { ps -C "$1" -o stat= 2>/dev/null | grep -qv '^Z'; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null \
    || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        munge slurm-wlm slurm-client slurmdbd mariadb-server >/dev/null
fi

# munge: the key and the daemon.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
running munged || runuser -u munge -- munged

# MariaDB, the accounting database behind slurmdbd (local socket only).
install -d -o mysql -g mysql /run/mysqld
if ! running mariadbd; then
    setsid mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
        >/var/log/mariadbd-atlasmap.log 2>&1 </dev/null &
fi
for _ in $(seq 1 60); do mariadb-admin --silent ping >/dev/null 2>&1 && break; sleep 0.5; done
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'atlasmap-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# slurm.conf: this node, its real CPUs and (a little less than) its memory.
cpus=$(nproc)
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
memory=$((memory - 512))
install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurmdbd.conf.new <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=atlasmap-test
StorageLoc=slurm_acct_db
CONF
chmod 0600 /etc/slurm/slurmdbd.conf.new
cat >/etc/slurm/slurm.conf.new <<CONF
ClusterName=atlasmap-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
DefMemPerCPU=500
MinJobAge=3600
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
# A fake GPU: without a File the node goes INVAL.
echo "Name=gpu Count=1 File=/dev/null" >/etc/slurm/gres.conf.new
changed=0
for f in slurm.conf gres.conf slurmdbd.conf; do
    if ! cmp -s /etc/slurm/$f.new /etc/slurm/$f; then
        mv /etc/slurm/$f.new /etc/slurm/$f
        changed=1
    else
        rm /etc/slurm/$f.new
    fi
done
if [ "$changed" = 1 ]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x slurmdbd || true
    for _ in $(seq 1 20); do
        running slurmctld || running slurmd || running slurmdbd || break
        sleep 0.5
    done
fi

# slurmdbd first, and the cluster, account and user in it before slurmctld
# registers (with associations enforced, a user without one cannot submit).
running slurmdbd || slurmdbd
for _ in $(seq 1 60); do timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
# (Listings read whole first: grep -q on a pipe would fail it under pipefail.)
clusters=$(sacctmgr -n list cluster format=cluster%64)
grep -qw atlasmap-test <<<"$clusters" || sacctmgr -i add cluster atlasmap-test >/dev/null
accounts=$(sacctmgr -n list account format=account%64)
grep -qw atlasmap <<<"$accounts" \
    || sacctmgr -i add account atlasmap Description=tests Organization=atlasmap >/dev/null
associations=$(sacctmgr -n list association user=root format=account%64)
grep -qw atlasmap <<<"$associations" || sacctmgr -i add user root Account=atlasmap >/dev/null

running slurmctld || slurmctld
running slurmd || slurmd -N localhost

for _ in $(seq 1 90); do
    if ! running slurmctld; then
        echo "slurmctld stopped; its log:" >&2
        tail -n 5 /var/log/slurm/slurmctld.log >&2
        exit 1
    fi
    state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle*|mixed*|allocated*) break ;;
        drain*|down*|inval*) scontrol update nodename=localhost state=resume || true ;;
    esac
    sleep 1
done
timeout 5 sinfo -h -o "%P %T %c %m %G" || true
state=$(timeout 5 sinfo -h -n localhost -o %T | head -n 1 || true)
case "$state" in
    idle*|mixed*|allocated*) echo "slurm is up (node $state)" ;;
    *) echo "slurm did not come up (node $state)" >&2; exit 1 ;;
esac
