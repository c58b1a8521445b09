#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on 127.0.0.1, for the workflow tests and for trying
# profiles/slurm by hand.
#
#   tests/slurm/cluster.sh start [STATE_DIR]   install (if missing), configure, start, wait idle
#   tests/slurm/cluster.sh stop  [STATE_DIR]   cancel its jobs, stop exactly the daemons it started
#   tests/slurm/cluster.sh status [STATE_DIR]
#
# STATE_DIR (default $ADVDISSECT_SLURM_DIR or /tmp/advdissect-slurm) holds everything: configs,
# the munge key and socket, spool and state dirs, logs, pids, client wrappers. Nothing under /etc
# is written, so clients need `source STATE_DIR/env.sh` (SLURM_CONF, and STATE_DIR/bin on PATH).
#
# The node `localhost` (127.0.0.1) has CPUs = the online CPUs, RealMemory = 90% of MemTotal and two fake
# GPUs: character devices STATE_DIR/dev/fakegpu{0,1} declared in gres.conf. SLURM schedules them
# like real ones and sets CUDA_VISIBLE_DEVICES from each job's GRES allocation; a TaskProlog
# records that value per task in STATE_DIR/log/tasks.log and prints it into the job's output.
# Partitions `cpu` (default) and `gpu` both hold the node, matching profiles/slurm.
# There is no slurmdbd: sacct has nothing to report, so Snakemake's slurm executor must query
# status with squeue (`slurm-status-command: squeue`); MinJobAge=3600 keeps finished jobs visible.
#
# Exit codes, so a test can tell "cannot run here" from a broken setup:
#   0 ok   2 usage   3 not root   4 cannot install the packages   5 a daemon did not start
#   6 node not idle in time   7 a cluster is already running from STATE_DIR
set -u

EX_USAGE=2 EX_NOROOT=3 EX_NOINSTALL=4 EX_DAEMON=5 EX_NOTIDLE=6 EX_RUNNING=7
PACKAGES=(slurmctld slurmd slurm-client munge)
BINARIES=(slurmctld slurmd munged sinfo squeue sbatch srun scancel scontrol)
declare -A PIDS_STARTED=([munged]="" [slurmctld]="" [slurmd]="")

cmd=${1:-}
STATE=$(realpath -m "${2:-${ADVDISSECT_SLURM_DIR:-/tmp/advdissect-slurm}}")
MARKER=.cluster-sh-state  # marks a directory this script may clear

die() { # code message...
    local code=$1
    shift
    echo "cluster.sh: $*" >&2
    exit "$code"
}

log_tail() { # show what the daemons said, for the reason of a failure
    local f
    for f in "$STATE"/log/munged.log "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log; do
        [[ -s $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
}

# pid alive and running the expected program (a stale pid file may name a recycled pid)
pid_is() { # pid name
    local pid=$1 name=$2 comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}

read_pids() { # fills PIDS[name]=pid from STATE/pids
    declare -gA PIDS=()
    local name pid
    [[ -f $STATE/pids ]] || return 0
    while read -r name pid; do
        [[ -n $name ]] && PIDS[$name]=$pid
    done <"$STATE/pids"
}

any_running() {
    local name
    read_pids
    for name in "${!PIDS[@]}"; do
        pid_is "${PIDS[$name]}" "$name" && return 0
    done
    return 1
}

used_ports() { # listening and connected TCP ports, from /proc (no ss/netstat needed)
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        while read -r _ local _; do
            [[ $local == *:* ]] || continue
            printf '%d\n' "0x${local##*:}"
        done <"$f"
    done | sort -u
}

free_port() { # a port in 20000-39999 that nothing uses and not in $* (already picked)
    local used port i
    used=$(used_ports)
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 20000))
        grep -qx "$port" <<<"$used" && continue
        [[ " $* " == *" $port "* ]] && continue
        echo "$port"
        return 0
    done
    return 1
}

ensure_packages() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die $EX_NOINSTALL "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
    echo "cluster.sh: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
    local aptlog=$STATE/log/apt.log
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$aptlog" 2>&1; then
        # package lists may be absent (fresh image): fetch them once and retry
        apt-get update -q >>"$aptlog" 2>&1 &&
            apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$aptlog" 2>&1 ||
            { tail -n 5 "$aptlog" >&2; die $EX_NOINSTALL "apt-get could not install ${PACKAGES[*]} (log: $aptlog)"; }
    fi
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || die $EX_NOINSTALL "$b still missing after installing ${PACKAGES[*]}"
    done
}

write_configs() {
    local cpus mem_kb mem_mb ctld_port slurmd_port
    cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc, which follows OMP_NUM_THREADS; the profile caps use os.cpu_count()
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$((mem_kb / 1024 * 9 / 10))
    ctld_port=$(free_port) || die $EX_DAEMON "no free TCP port for slurmctld"
    slurmd_port=$(free_port "$ctld_port") || die $EX_DAEMON "no free TCP port for slurmd"

    # Two fake GPUs: harmless character devices (same numbers as /dev/null and /dev/zero).
    # slurmd only stats File= for its device numbers; without cgroups nothing opens them.
    mkdir -p "$STATE/dev"
    local i majmin=("1 3" "1 5")
    for i in 0 1; do
        rm -f "$STATE/dev/fakegpu$i"
        # shellcheck disable=SC2086
        mknod "$STATE/dev/fakegpu$i" c ${majmin[$i]} 2>/dev/null ||
            ln -s /dev/null "$STATE/dev/fakegpu$i" ||
            die $EX_DAEMON "cannot create fake GPU device $STATE/dev/fakegpu$i"
    done

    cat >"$STATE/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$STATE/dev/fakegpu[0-1]
EOF

    # Runs as the job's user before each task; `print` lines go into the task's output.
    cat >"$STATE/taskprolog.sh" <<EOF
#!/bin/sh
echo "print advdissect-slurm: job=\${SLURM_JOB_ID} step=\${SLURM_STEP_ID:-batch} CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES-unset}"
echo "\${SLURM_JOB_ID} \${SLURM_STEP_ID:-batch} \${CUDA_VISIBLE_DEVICES-unset} \${SLURM_JOB_NAME:-} \${SLURM_JOB_PARTITION:-}" >>"$STATE/log/tasks.log"
exit 0
EOF
    chmod 755 "$STATE/taskprolog.sh"

    cat >"$STATE/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh for a one-node test cluster.
ClusterName=advdissect
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.sock
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers rarely allow them): plain process tracking, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
TaskProlog=$STATE/taskprolog.sh
# Finished jobs stay visible to squeue for an hour: the executor's status queries use squeue.
MinJobAge=3600
ReturnToService=2
# Trust the node line below even where the sandbox reports other topology.
SlurmdParameters=config_overrides
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF

    write_wrappers
    printf 'export SLURM_CONF=%q\nexport PATH=%q:"$PATH"\n' "$STATE/slurm.conf" "$STATE/bin" >"$STATE/env.sh"
}

# Client wrappers in STATE/bin that name this cluster's slurm.conf. SLURM_CONF alone is not
# enough: the executor's job step (snakemake-executor-plugin-slurm-jobstep) drops every SLURM_*
# variable before its inner `srun`, which would then look for /etc/slurm/slurm.conf. PATH
# survives, so jobs reach this cluster through the wrappers. sbatch also keeps each submission's
# arguments, NUL-separated, in STATE/log/sbatch/<job id>.args.
real_bin() { # name: the first one on PATH that is not a wrapper of some cluster.sh
    local dir
    local IFS=:
    for dir in $PATH; do
        [[ -e $dir/.cluster-sh-wrappers ]] && continue
        [[ -x $dir/$1 && ! -d $dir/$1 ]] && { echo "$dir/$1"; return 0; }
    done
    return 1
}

write_wrappers() {
    local b real
    mkdir -p "$STATE/bin"
    : >"$STATE/bin/.cluster-sh-wrappers"
    for b in srun salloc squeue sinfo scancel scontrol sacct sstat; do
        real=$(real_bin "$b") || continue
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$STATE/slurm.conf" "$real" >"$STATE/bin/$b"
    done
    real=$(real_bin sbatch) || die $EX_NOINSTALL "sbatch not found on PATH"
    mkdir -p "$STATE/log/sbatch"
    cat >"$STATE/bin/sbatch" <<EOF
#!/bin/bash
out=\$(SLURM_CONF=$STATE/slurm.conf $real "\$@")
rc=\$?
[[ -n \$out ]] && printf '%s\n' "\$out"
id=\${out%%;*}
[[ \$rc -eq 0 && \$id =~ ^[0-9]+\$ ]] || id=failed-\$\$
printf '%s\0' "\$@" >"$STATE/log/sbatch/\$id.args"
exit \$rc
EOF
    chmod 755 "$STATE"/bin/[a-z]*
}

record_pid() { # name pidfile
    local name=$1 pidfile=$2 pid="" i
    for ((i = 0; i < 50; i++)); do
        pid=$(cat "$pidfile" 2>/dev/null)
        pid_is "$pid" "$name" && break
        sleep 0.2
    done
    pid_is "$pid" "$name" || fail $EX_DAEMON "$name did not start (no live pid in $pidfile)"
    echo "$name $pid" >>"$STATE/pids"
    PIDS_STARTED[$name]=$pid
}

fail() { # code message: show the logs, stop what this start began, exit
    local code=$1
    shift
    log_tail
    stop 2>/dev/null
    die "$code" "$*"
}

start() {
    [[ $(id -u) -eq 0 ]] || die $EX_NOROOT "must run as root (daemons run as root, packages may need installing)"
    if any_running; then
        die $EX_RUNNING "a cluster from $STATE is already running (pids: $(tr '\n' ' ' <"$STATE/pids")); stop it first"
    fi
    [[ $STATE =~ [[:space:]] ]] && die $EX_USAGE "STATE_DIR must not contain spaces: '$STATE'"
    ((${#STATE} < 80)) || die $EX_USAGE "STATE_DIR too long for the munge socket path: $STATE"
    if [[ -e $STATE && -n $(ls -A "$STATE" 2>/dev/null) && ! -e $STATE/$MARKER ]]; then
        die $EX_USAGE "refusing to clear $STATE: not empty and not made by cluster.sh"
    fi
    rm -rf "$STATE"
    mkdir -p "$STATE"/{log,run,ctld,spool,munge} || die $EX_DAEMON "cannot create $STATE"
    : >"$STATE/$MARKER"
    chmod 755 "$STATE" "$STATE/munge"
    : >"$STATE/pids"
    : >"$STATE/log/tasks.log"
    chmod 666 "$STATE/log/tasks.log"
    ensure_packages
    write_configs
    export SLURM_CONF=$STATE/slurm.conf

    # munge: a private key and socket, so a system munged (if any) is left alone
    head -c 1024 /dev/urandom >"$STATE/munge/munge.key"
    chmod 400 "$STATE/munge/munge.key"
    munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.sock" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed" >>"$STATE/log/munged.log" 2>&1 ||
        fail $EX_DAEMON "munged failed to start"
    record_pid munged "$STATE/run/munged.pid"

    # -c: start from an empty state (no jobs, job ids from 1)
    slurmctld -c -f "$SLURM_CONF" >>"$STATE/log/slurmctld.log" 2>&1 ||
        fail $EX_DAEMON "slurmctld failed to start"
    record_pid slurmctld "$STATE/run/slurmctld.pid"

    slurmd -f "$SLURM_CONF" -N localhost >>"$STATE/log/slurmd.log" 2>&1 ||
        fail $EX_DAEMON "slurmd failed to start"
    record_pid slurmd "$STATE/run/slurmd.pid"

    # Up to 30 s for the node to register; a daemon that died on a config error ends it early.
    local state="" name deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        for name in munged slurmctld slurmd; do
            pid_is "${PIDS_STARTED[$name]}" "$name" || fail $EX_DAEMON "$name exited after starting"
        done
        state=$(timeout 5 sinfo -h -n localhost -p cpu -o %t 2>/dev/null)
        [[ $state == idle ]] && break
        sleep 0.5
    done
    [[ $state == idle ]] || fail $EX_NOTIDLE "node localhost not idle after 30 s (state: '${state:-none}')"
    echo "cluster.sh: one-node cluster up (pids: $(tr '\n' ' ' <"$STATE/pids"))" >&2
    cat "$STATE/env.sh"
}

stop() {
    read_pids
    if ((${#PIDS[@]} == 0)); then
        echo "cluster.sh: no pids recorded in $STATE/pids; nothing to stop" >&2
        return 0
    fi
    export SLURM_CONF=$STATE/slurm.conf
    # Jobs first, while slurmctld and slurmd can still end their steps.
    if pid_is "${PIDS[slurmctld]:-}" slurmctld; then
        local jobs i
        jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null
            for ((i = 0; i < 30; i++)); do
                [[ -z $(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    local name pid i
    for name in slurmd slurmctld munged; do
        pid=${PIDS[$name]:-}
        pid_is "$pid" "$name" || continue
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            pid_is "$pid" "$name" || break
            sleep 0.2
        done
        if pid_is "$pid" "$name"; then
            kill -KILL "$pid" 2>/dev/null
            echo "cluster.sh: $name ($pid) killed" >&2
        fi
    done
    : >"$STATE/pids"
    echo "cluster.sh: stopped the cluster in $STATE" >&2
}

status() {
    read_pids
    local name
    for name in munged slurmctld slurmd; do
        if pid_is "${PIDS[$name]:-}" "$name"; then
            echo "$name running (pid ${PIDS[$name]})"
        else
            echo "$name not running"
        fi
    done
    any_running && SLURM_CONF=$STATE/slurm.conf sinfo -N -l
}

case $cmd in
start) start ;;
stop) stop ;;
status) status ;;
*) die $EX_USAGE "usage: $0 start|stop|status [STATE_DIR]" ;;
esac
