#!/usr/bin/env bash
# Runs inside the test VM (see bench/run.sh): the same fio jobs on a ublkvd
# vdisk, a kernel loop device with direct I/O, and the raw scratch disk, all
# over the same region of the same virtio disk, and prints a markdown table.
#
# Each job runs BENCH_ROUNDS times on every target, the targets' order
# rotating from round to round, and the table shows each target's median:
# under TCG the host's own writeback and scheduling move single runs by 20%.
set -euo pipefail

BIN=${UBLKVD_BIN:?}
SCRATCH=${UBLKVD_SCRATCH:-/dev/vda}
RUNTIME=${BENCH_RUNTIME:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE_MB=${BENCH_SIZE_MB:-1024}
QUEUES=${BENCH_QUEUES:-1}
ONLY=${BENCH_ONLY:-}
WORK=$(mktemp -d /tmp/bench.XXXXXX)
SOCK=$WORK/ublkvd.sock

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

modprobe -a ublk_drv loop

# Reads of never-written sectors of a sparse image cost qemu nothing: fill
# the region first so that every target reads real data.
dd if=/dev/urandom of="$SCRATCH" bs=1M count="$SIZE_MB" oflag=direct status=none

# The daemon runs in one of two modes, switched by restarting it (the vdisk
# comes back with the new daemon): zero copy where the kernel has it (the
# default), and the driver's copy (zero_copy = false).
printf 'zero_copy = false\n' >"$WORK/copy.toml"
daemon= mode=
ublkvd_mode() { # MODE: zero-copy or copy
    [ "$mode" != "$1" ] || return 0
    if [ -n "$daemon" ]; then kill -TERM "$daemon"; wait "$daemon"; fi
    local config=()
    [ "$1" = copy ] && config=(--config "$WORK/copy.toml")
    "$BIN" serve --data-dir "$WORK/data" --socket "$SOCK" "${config[@]}" 2>>"$WORK/daemon.log" &
    daemon=$! mode=$1
    for _ in $(seq 200); do "$BIN" --socket "$SOCK" list >/dev/null 2>&1 && break; sleep 0.05; done
}
device_of() { "$BIN" --socket "$SOCK" list --json | jq -r --arg n "$1" '.[] | select(.name == $n) | .device'; }

ublkvd_mode copy
"$BIN" --socket "$SOCK" add bench --size "${SIZE_MB}M" --tail "$SCRATCH" --queues "$QUEUES" >/dev/null
ublkvd_mode zero-copy
zero_copy=$("$BIN" --socket "$SOCK" list --json | jq -r '.[] | select(.name == "bench") | .zero_copy')
loop=$(losetup --find --show --direct-io=on --sizelimit $((SIZE_MB << 20)) "$SCRATCH")
[ "$(cat /sys/block/"$(basename "$loop")"/loop/dio)" = 1 ]
# Without zero copy in this kernel both modes are the same: measure one.
if [ "$zero_copy" = true ]; then targets=(zero-copy copy loop raw); else targets=(copy loop raw); fi
echo "kernel $(uname -r); ublkvd zero copy: $zero_copy"

# name|fio arguments|unit: IOPS rows compare IOPS, MiB/s rows bandwidth
JOBS=(
    "4k randread QD1|--rw=randread --bs=4k --iodepth=1|IOPS"
    "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|IOPS"
    "4k randread QD32|--rw=randread --bs=4k --iodepth=32|IOPS"
    "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|IOPS"
    "1M seq read QD8|--rw=read --bs=1M --iodepth=8|MiB/s"
    "1M seq write QD8|--rw=write --bs=1M --iodepth=8|MiB/s"
)

# use TARGET: sets dev to the block device of a target, restarting the
# daemon in the target's mode for a ublkvd one.
use() {
    case $1 in
        zero-copy | copy)
            ublkvd_mode "$1"
            for _ in $(seq 200); do
                dev=$(device_of bench)
                [ -b "$dev" ] && return 0
                sleep 0.05
            done
            echo "no device for bench in mode $1" >&2; return 1 ;;
        loop) dev=$loop ;;
        raw) dev=$SCRATCH ;;
    esac
}

header="| job |" rule="|---|"
for t in "${targets[@]}"; do header+=" $t |"; rule+="---|"; done
for t in "${targets[@]:0:${#targets[@]}-2}"; do header+=" $t / loop |"; rule+="---|"; done
echo
echo "Each cell: median rate, and in brackets the guest CPU per I/O (µs; per MiB for MiB/s rows)."
echo
echo "$header"
echo "$rule"
for job in "${JOBS[@]}"; do
    IFS='|' read -r name args unit <<<"$job"
    [[ $name == *"$ONLY"* ]] || continue
    declare -A runs=() cpus=() med=()
    n=${#targets[@]}
    for round in $(seq 0 $((ROUNDS - 1))); do
        for i in $(seq 0 $((n - 1))); do
            t=${targets[$(((i + round) % n))]}
            use "$t"
            # shellcheck disable=SC2086 # args are words on purpose
            read -r v c < <(fio_cpu "$unit" "$dev" $args)
            runs[$t]+="$v " cpus[$t]+="$c "
        done
    done
    row="| $name |"
    for t in "${targets[@]}"; do
        med[$t]=$(printf '%s\n' ${runs[$t]} | median)
        row+=" ${med[$t]} $unit ($(printf '%s\n' ${cpus[$t]} | median)) |"
        echo "  runs: $t ${runs[$t]}/ cpu ${cpus[$t]}" >&2
    done
    for t in "${targets[@]:0:${#targets[@]}-2}"; do row+=" $(ratio "${med[$t]}" "${med[loop]}")x |"; done
    echo "$row"
    unset runs cpus med
done

# Without zero copy, ublk copies every byte between the request's pages and
# the server's buffer in the guest; loop and the raw disk let qemu DMA
# straight into them. The guest's copy bandwidth bounds the copy mode's
# large-block rows: measure it in the same run.
head -c 1G /dev/urandom >/dev/shm/copy-probe
copy=$(dd if=/dev/shm/copy-probe of=/dev/null bs=1M 2>&1 | awk '/copied/ { print $(NF-1), $NF }')
rm /dev/shm/copy-probe
echo
echo "guest memory copy (tmpfs -> user, dd bs=1M): $copy"

losetup -d "$loop"
kill -TERM "$daemon"
wait "$daemon"
