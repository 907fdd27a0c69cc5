#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests/test_slurm.py and for trying
# profiles/slurm by hand. Debian/Ubuntu, root, no systemd needed.
#
#   tests/slurm/local_cluster.sh start    install packages if missing, write slurm.conf, start
#                                         munged, slurmctld and slurmd, wait until `srun true` works
#   tests/slurm/local_cluster.sh status   exit 0 when the cluster answers, 1 otherwise
#   tests/slurm/local_cluster.sh stop     stop the daemons this script started
#
# Every command is idempotent. State (slurm.conf, pid files, logs, spool) lives in
# $UNITABLATION_SLURM_DIR (default /tmp/unitablation-slurm). /etc/slurm/slurm.conf becomes a
# symlink to its slurm.conf (removed by stop): SLURM_CONF alone is not enough, because the
# plugin's job step drops every SLURM_* variable before its inner `srun`. An existing
# /etc/slurm/slurm.conf that is not this symlink (a real cluster) makes start refuse.
# No accounting daemon: submit with `slurm-status-command: squeue`; MinJobAge=3600 keeps finished
# jobs visible to `squeue --states=all` for an hour.
# The daemons listen on ports 6817 and 6818 of all interfaces; everything here talks to localhost.

set -euo pipefail

STATE_DIR=${UNITABLATION_SLURM_DIR:-/tmp/unitablation-slurm}
CONF="$STATE_DIR/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
CLUSTER=unitablation
PARTITION=local # tests/test_slurm.py submits to it
NODE=localhost
START_TIMEOUT=${UNITABLATION_SLURM_START_TIMEOUT:-60}
PACKAGES=(munge slurmctld slurmd slurm-client)
COMMANDS=(munged munge unmunge slurmctld slurmd sbatch srun squeue sinfo scontrol)
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf 'local_cluster: %s\n' "$*"; }
die() {
    printf 'local_cluster: ERROR: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] ||
        die "must run as root (it installs Debian packages and starts munged, slurmctld and slurmd as root); current uid is $(id -u)"
}

missing_commands() {
    local command
    for command in "${COMMANDS[@]}"; do
        command -v "$command" >/dev/null 2>&1 || printf '%s ' "$command"
    done
}

install_packages() {
    local missing
    missing=$(missing_commands)
    if [[ -z $missing ]]; then
        say "SLURM and munge are installed ($(slurmd -V 2>/dev/null || echo "slurmd -V fails"))"
        return
    fi
    say "missing commands: $missing"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get is not available: install ${PACKAGES[*]} (Debian/Ubuntu package names) by hand"
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get install -y --no-install-recommends ${PACKAGES[*]}"
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
        say "install failed; apt-get update, then again"
        apt-get update || die "apt-get update failed (no access to the Debian package mirror?)"
        apt-get install -y --no-install-recommends "${PACKAGES[@]}" ||
            die "apt-get install ${PACKAGES[*]} failed"
    fi
    missing=$(missing_commands)
    [[ -z $missing ]] || die "still missing after apt-get install: $missing"
}

# pid from a pid file, printed only when that process is alive
live_pid() {
    local file=$1 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] && printf '%s' "$pid"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        say "munged is running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    say "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    local waited=0
    until munge_works; do
        ((waited++ < 50)) || die "munged does not answer (munge -n | unmunge fails)"
        sleep 0.1
    done
    cat /run/munge/munged.pid >"$STATE_DIR/munged.started" 2>/dev/null || true
}

write_conf() {
    local cpus memory
    cpus=$(nproc)
    # RealMemory as slurmd measures it, minus 1 GiB for the OS and the Snakemake main process.
    memory=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    [[ $memory =~ ^[0-9]+$ ]] || memory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024))
    memory=$((memory > 2048 ? memory - 1024 : memory / 2))
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool"
    cat >"$CONF.new" <<EOF
# Written by tests/slurm/local_cluster.sh: one node (this machine as "$NODE"), one partition.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=5
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.new" "$CONF"
    say "wrote $CONF (node $NODE: CPUs=$cpus RealMemory=${memory} MB; partition $PARTITION)"
}

# Whether /etc/slurm/slurm.conf is ours: absent, or a symlink to $CONF.
system_conf_is_ours() {
    [[ ! -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]] ||
        [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]
}

link_system_conf() {
    system_conf_is_ours ||
        die "$SYSTEM_CONF exists and is not a link to $CONF: this machine has its own SLURM configuration; refusing to replace it"
    if [[ ! -L $SYSTEM_CONF ]]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -s "$CONF" "$SYSTEM_CONF"
        say "linked $SYSTEM_CONF -> $CONF"
    fi
}

srun_works() { timeout 20 srun --partition="$PARTITION" --nodes=1 --ntasks=1 --time=1 true >/dev/null 2>&1; }

daemons_alive() {
    live_pid "$STATE_DIR/slurmctld.pid" >/dev/null && live_pid "$STATE_DIR/slurmd.pid" >/dev/null
}

print_logs() {
    local log
    for log in "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log"; do
        [[ -f $log ]] && { printf -- '--- last lines of %s\n' "$log" >&2; tail -n 20 "$log" >&2; }
    done
    return 0
}

start() {
    require_root
    mkdir -p "$STATE_DIR"
    system_conf_is_ours ||
        die "$SYSTEM_CONF exists and is not a link to $CONF: this machine has its own SLURM configuration; refusing to replace it"
    if [[ -f $CONF && -L $SYSTEM_CONF ]] && daemons_alive && srun_works; then
        say "already running ($SYSTEM_CONF -> $CONF)"
        return
    fi
    install_packages
    start_munge
    if [[ ! -f $CONF ]] || ! daemons_alive; then
        stop_slurm_daemons
        write_conf
    fi
    link_system_conf
    if ! live_pid "$STATE_DIR/slurmctld.pid" >/dev/null; then
        say "starting slurmctld"
        slurmctld -f "$CONF" -i || { print_logs; die "slurmctld did not start"; }
    fi
    if ! live_pid "$STATE_DIR/slurmd.pid" >/dev/null; then
        say "starting slurmd"
        slurmd -f "$CONF" -N "$NODE" || { print_logs; die "slurmd did not start"; }
    fi
    say "waiting (at most ${START_TIMEOUT} s) until \`srun true\` works"
    local start_time=$SECONDS
    until srun_works; do
        if ((SECONDS - start_time >= START_TIMEOUT)); then
            sinfo -N -l >&2 || true
            print_logs
            die "\`srun true\` still fails after ${START_TIMEOUT} s"
        fi
        sleep 1
    done
    say "ready after $((SECONDS - start_time)) s: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %a')"
}

stop_pid_file() {
    local name=$1 file=$2 pid waited=0
    if pid=$(live_pid "$file"); then
        say "stopping $name (pid $pid)"
        kill "$pid"
        while kill -0 "$pid" 2>/dev/null; do
            if ((waited++ >= 100)); then
                say "$name ignores SIGTERM; SIGKILL"
                kill -9 "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$file"
}

stop_slurm_daemons() {
    stop_pid_file slurmd "$STATE_DIR/slurmd.pid"
    stop_pid_file slurmctld "$STATE_DIR/slurmctld.pid"
}

stop() {
    require_root
    if [[ ! -d $STATE_DIR ]]; then
        say "not running (no $STATE_DIR)"
        return
    fi
    stop_slurm_daemons
    # munged only when this script started it (it may serve something else otherwise)
    stop_pid_file munged "$STATE_DIR/munged.started"
    if [[ -L $SYSTEM_CONF ]] && system_conf_is_ours; then
        rm -f "$SYSTEM_CONF"
        say "removed the link $SYSTEM_CONF"
    fi
    say "stopped"
}

status() {
    local pid name ok=0
    for name in slurmctld slurmd; do
        if pid=$(live_pid "$STATE_DIR/$name.pid"); then
            say "$name running (pid $pid)"
        else
            say "$name not running"
            ok=1
        fi
    done
    if ((ok == 0)) && sinfo -h -o '%P %t %D %c %m' >/dev/null 2>&1; then
        say "sinfo: $(sinfo -h -o 'partition %P, state %t, %D node(s), %c CPUs, %m MB')"
        return 0
    fi
    say "cluster is not up"
    return 1
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
    printf 'usage: %s start|status|stop\n' "$0" >&2
    exit 2
    ;;
esac
