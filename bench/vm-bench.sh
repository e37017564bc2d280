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

"$BIN" serve --data-dir "$WORK/data" --socket "$SOCK" 2>"$WORK/daemon.log" &
daemon=$!
for _ in $(seq 100); do "$BIN" --socket "$SOCK" list >/dev/null 2>&1 && break; sleep 0.05; done
ublk=$("$BIN" --socket "$SOCK" add bench --size "${SIZE_MB}M" --tail "$SCRATCH" --queues "$QUEUES")
loop=$(losetup --find --show --direct-io=on --sizelimit $((SIZE_MB << 20)) "$SCRATCH")
[ "$(cat /sys/block/"$(basename "$loop")"/loop/dio)" = 1 ]
targets=("$ublk" "$loop" "$SCRATCH")

# name|fio arguments|unit: IOPS rows compare IOPS, MiB/s rows bandwidth
JOBS=(
    "4k randread QD32|--rw=randread --bs=4k --iodepth=32|IOPS"
    "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|IOPS"
    "1M seq read QD8|--rw=read --bs=1M --iodepth=8|MiB/s"
    "1M seq write QD8|--rw=write --bs=1M --iodepth=8|MiB/s"
)

echo "| job | ublkvd | loop (direct-io) | raw disk | ublkvd / loop |"
echo "|---|---|---|---|---|"
for job in "${JOBS[@]}"; do
    IFS='|' read -r name args unit <<<"$job"
    [[ $name == *"$ONLY"* ]] || continue
    declare -A results=()
    for round in $(seq 0 $((ROUNDS - 1))); do
        for i in 0 1 2; do
            target=${targets[$(((i + round) % 3))]}
            # shellcheck disable=SC2086 # args are words on purpose
            results[$target]+="$(run_fio "$unit" "$target" $args) "
        done
    done
    u=$(printf '%s\n' ${results[$ublk]} | median)
    l=$(printf '%s\n' ${results[$loop]} | median)
    r=$(printf '%s\n' ${results[$SCRATCH]} | median)
    echo "| $name | $u $unit | $l $unit | $r $unit | $(ratio "$u" "$l")x |"
    echo "  runs: ublkvd ${results[$ublk]}/ loop ${results[$loop]}/ raw ${results[$SCRATCH]}" >&2
    unset results
done

# ublk on this kernel (6.12, no zero copy) copies every byte between the
# request's pages and the server's buffer in the guest; loop and the raw
# disk let qemu DMA straight into them. The guest's copy bandwidth bounds
# ublkvd's large-block rows: measure it in the same run.
head -c 1G /dev/urandom >/dev/shm/copy-probe
copy=$(dd if=/dev/shm/copy-probe of=/dev/null bs=1M 2>&1 | awk '/copied/ { print $(NF-1), $NF }')
rm /dev/shm/copy-probe
echo
echo "guest memory copy (tmpfs -> user, dd bs=1M): $copy"

losetup -d "$loop"
kill -TERM "$daemon"
wait "$daemon"
