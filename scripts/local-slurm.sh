#!/usr/bin/env bash
# A single-node SLURM on this machine, on loopback, for trying the Snakemake profile
# (configs/slurm) and the dask-jobqueue recipe as a user would (docs/pipeline.md).
#
#   scripts/local-slurm.sh start    # install/check slurm-wlm + munge, write slurm.conf, start, wait for `sinfo` idle
#   scripts/local-slurm.sh status   # what runs, where the config and logs are
#   scripts/local-slurm.sh stop     # stop the daemons this script started, restore /etc/slurm/slurm.conf
#   scripts/local-slurm.sh env      # `eval "$(scripts/local-slurm.sh env)"`: SLURM_CONF for this shell
#
# Everything lives in the state directory ($IML_SLURM_STATE, default /tmp/iml-slurm): slurm.conf,
# a munge key and socket of its own (the system's munged, if any, is left alone), pid files, logs,
# the job completion log (jobcomp.log) and the spool. Outside it, only /etc/slurm/slurm.conf is
# touched: Snakemake's in-job step drops SLURM_CONF, so srun inside a job reads /etc/slurm/slurm.conf;
# an existing file is moved aside and restored by `stop`.
#
# No slurmdbd: accounting_storage/none, so `sacct` has nothing to report; jobs are tracked with
# `squeue` (MinJobAge=600 keeps finished jobs visible for 10 minutes, as the executor plugin needs
# for its status_command: squeue) and every finished job is one line of the job completion log.
# Memory is a consumable resource (CR_Core_Memory): a job asking for more than RealMemory is
# refused at submission. It is not enforced while a job runs (no cgroups in this container:
# proctrack/linuxproc, task/none); see docs/pipeline.md for what that means for the memory retry test.
# Must run as root (daemons, /etc/slurm). Idempotent: `start` twice leaves one cluster, `stop` twice
# is a no-op. Exit 0 on success, 1 on failure with one line on stderr saying why.
set -euo pipefail

STATE=${IML_SLURM_STATE:-/tmp/iml-slurm}
ETC_CONF=/etc/slurm/slurm.conf
BACKUP=/etc/slurm/slurm.conf.before-iml-local-slurm
PORT_CTLD=${IML_SLURM_CTLD_PORT:-6817}
PORT_D=${IML_SLURM_D_PORT:-6818}

die() { echo "local-slurm: $*" >&2; exit 1; }

# pid in $1 alive and its command line names this state directory (so never someone else's daemon)
ours() {
  local pidfile=$1 pid
  [[ -s $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$STATE/"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sinfo >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install slurm-wlm and munge with your package manager."
  echo "local-slurm: installing slurm-wlm and munge (Debian packages)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || die "apt-get install slurm-wlm munge failed; install them by hand and run again."
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  # this machine's CPUs and memory as slurmd itself sees them; 5% of the memory kept for the OS
  read -r cpus mem < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
  [[ -n ${cpus:-} && -n ${mem:-} ]] || die "cannot read this machine's CPUs and memory from 'slurmd -C'."
  mem=$((mem * 95 / 100))
  mkdir -p "$STATE"/{ctld,spool,log}
  cat > "$STATE/slurm.conf" <<EOF
# written by scripts/local-slurm.sh: a single-node cluster on loopback
ClusterName=imllocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT_CTLD
SlurmdPort=$PORT_D
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

link_etc() {
  mkdir -p /etc/slurm
  if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$STATE/slurm.conf" ]]; then
    return 0
  fi
  if [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
    [[ -e $BACKUP || -L $BACKUP ]] && die "$BACKUP exists already; restore it to $ETC_CONF by hand, then run again."
    mv "$ETC_CONF" "$BACKUP"
    echo "local-slurm: moved $ETC_CONF aside to $BACKUP (restored by stop)" >&2
  fi
  ln -s "$STATE/slurm.conf" "$ETC_CONF"
}

unlink_etc() {
  if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$STATE/slurm.conf" ]]; then
    rm -f "$ETC_CONF"
  fi
  if [[ -e $BACKUP || -L $BACKUP ]] && [[ ! -e $ETC_CONF && ! -L $ETC_CONF ]]; then
    mv "$BACKUP" "$ETC_CONF"
    echo "local-slurm: restored $ETC_CONF" >&2
  fi
}

start() {
  [[ $(id -u) == 0 ]] || die "must run as root (starts slurmctld/slurmd, writes $ETC_CONF)."
  install_packages
  if ours "$STATE/slurmctld.pid" && ours "$STATE/slurmd.pid" && ours "$STATE/munged.pid"; then
    echo "local-slurm: already running (state in $STATE)" >&2
    return 0
  fi
  # a half-started cluster from an earlier attempt: stop what is ours, then start afresh
  stop_daemons
  write_conf
  export SLURM_CONF=$STATE/slurm.conf
  if [[ ! -s $STATE/munge.key ]]; then
    mungekey --create --keyfile="$STATE/munge.key" >/dev/null 2>&1 \
      || dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$STATE/munge.key"
  fi
  chmod 0700 "$STATE"
  munged --force --socket="$STATE/munge.socket" --key-file="$STATE/munge.key" --pid-file="$STATE/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munged.seed" \
    || die "munged did not start; see $STATE/log/munged.log."
  link_etc
  slurmctld -f "$STATE/slurm.conf" || die "slurmctld did not start; see $STATE/log/slurmctld.log."
  slurmd -f "$STATE/slurm.conf" || die "slurmd did not start; see $STATE/log/slurmd.log."
  local i state=""
  for i in $(seq 1 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    [[ $state == idle ]] && break
    sleep 1
  done
  if [[ $state != idle ]]; then
    # a node left DOWN by an earlier unclean stop comes back with RESUME
    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
    sleep 2
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  fi
  [[ $state == idle ]] || die "the node is '${state:-unknown}' instead of idle after 60 s; see $STATE/log/slurmctld.log and slurmd.log."
  echo "local-slurm: running; node $(hostname -s) idle ($(sinfo -h -N -o '%c CPUs, %m MB')); SLURM_CONF=$STATE/slurm.conf" >&2
}

stop_daemons() {
  local name pid i
  for name in slurmd slurmctld munged; do
    if ours "$STATE/$name.pid"; then
      pid=$(cat "$STATE/$name.pid")
      kill "$pid" 2>/dev/null || true
      for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && { echo "local-slurm: $name ($pid) did not stop on SIGTERM; SIGKILL" >&2; kill -9 "$pid" || true; }
    fi
    rm -f "$STATE/$name.pid"
  done
}

stop() {
  [[ $(id -u) == 0 ]] || die "must run as root."
  stop_daemons
  unlink_etc
  echo "local-slurm: stopped (state kept in $STATE; remove it for a fresh cluster)" >&2
}

status() {
  local name running=0
  for name in munged slurmctld slurmd; do
    if ours "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; running=$((running + 1));
    else echo "$name: not running"; fi
  done
  echo "state: $STATE"
  [[ -L $ETC_CONF ]] && echo "$ETC_CONF -> $(readlink "$ETC_CONF")"
  if ((running == 3)); then SLURM_CONF=$STATE/slurm.conf sinfo -N -o '%N %T %c %m'; return 0; fi
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
  *) echo "usage: $0 start|stop|status|env   (state directory: \$IML_SLURM_STATE, default /tmp/iml-slurm)" >&2; exit 2 ;;
esac
