#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine (no systemd, no accounting database), for
# tests/test_slurm.py and for trying the SLURM profile by hand. Needs root.
#
#   tests/slurm/cluster.sh install                  # apt-get install slurm-wlm munge (once)
#   tests/slurm/cluster.sh start DIR [CTLD_PORT SLURMD_PORT]
#   source DIR/env                                  # SLURM_CONF and PATH for sbatch/squeue/snakemake
#   tests/slurm/cluster.sh stop DIR
#
# `start` writes DIR/etc/slurm.conf from slurm.conf.in (this host as controller and only node with
# its real CPUs and ~95% of its memory, partition "debug"), a fresh munge key, then starts munged,
# slurmctld and slurmd (their pids in DIR/run/*.pid) and waits until the node is idle. The ports
# default to 16817/16818 so that a system SLURM on the default ports is left alone.
#
# DIR/bin/srun wraps the real srun with SLURM_CONF set: the jobs inherit PATH (sbatch
# --export=ALL), and the executor's job step drops SLURM_* variables (SLURM_CONF included) before
# it calls srun inside the job.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PARTITION=debug

die() { echo "cluster.sh: $*" >&2; exit 1; }

install_packages() {
    [[ $(id -u) == 0 ]] || die "install needs root"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
}

# Memory of the node in MB: 95% of MemTotal, so that slurmd does not drain the node as too small.
node_mem_mb() { awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo; }

write_config() {
    local dir=$1 ctld_port=$2 slurmd_port=$3
    sed -e "s|@DIR@|$dir|g" -e "s|@HOST@|$(hostname -s)|g" -e "s|@CPUS@|$(nproc)|g" \
        -e "s|@MEM_MB@|$(node_mem_mb)|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
        -e "s|@SLURMD_PORT@|$slurmd_port|g" -e "s|@PARTITION@|$PARTITION|g" \
        "$HERE/slurm.conf.in" >"$dir/etc/slurm.conf"
    cat >"$dir/bin/srun" <<EOF
#!/bin/sh
SLURM_CONF='$dir/etc/slurm.conf' exec $(command -v srun) "\$@"
EOF
    chmod 755 "$dir/bin/srun"
    cat >"$dir/env" <<EOF
export SLURM_CONF='$dir/etc/slurm.conf'
export PATH='$dir/bin':"\$PATH"
EOF
}

start_munge() {
    local dir=$1
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${seconds}s waiting for $what (logs in ${DIR}/log)"
}

node_idle() { [[ $(sinfo -h -N -o %t) == idle ]]; }

start() {
    DIR=$(realpath -m "$1"); local ctld_port=${2:-16817} slurmd_port=${3:-16818}
    [[ $(id -u) == 0 ]] || die "start needs root"
    for tool in munged slurmctld slurmd sinfo; do command -v "$tool" >/dev/null || die "$tool not installed (run: $0 install)"; done
    mkdir -p "$DIR"/{etc,state,spool,log,run,bin,munge}
    chmod 700 "$DIR/munge"
    write_config "$DIR" "$ctld_port" "$slurmd_port"
    export SLURM_CONF="$DIR/etc/slurm.conf"
    start_munge "$DIR"
    wait_for 10 munged test -S "$DIR/munge/munge.socket"
    slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF"
    wait_for 60 "the node to be idle" node_idle
    echo "SLURM cluster up: source $DIR/env"
}

stop() {
    local dir pid name
    dir=$(realpath -m "$1")
    if [[ -s "$dir/run/slurmctld.pid" ]]; then  # cancel the jobs first, so that no job step outlives slurmd
        export SLURM_CONF="$dir/etc/slurm.conf"
        scancel --partition "$PARTITION" 2>/dev/null || true
        for _ in $(seq 30); do [[ -z $(squeue -h -t RUNNING,COMPLETING,PENDING 2>/dev/null) ]] && break; sleep 1; done
    fi
    for name in slurmd slurmctld munged; do
        [[ -s "$dir/run/$name.pid" ]] || continue
        pid=$(<"$dir/run/$name.pid")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
    install) install_packages ;;
    start) [[ $# -ge 2 ]] || die "usage: $0 start DIR [CTLD_PORT SLURMD_PORT]"; start "${@:2}" ;;
    stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR [CTLD_PORT SLURMD_PORT] | stop DIR" ;;
esac
