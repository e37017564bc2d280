#!/usr/bin/env bash
# Runs inside the test VM (see bench/cluster.sh): remote tails measured in
# one run, in network namespaces (tests/vm/lab.sh). Prints markdown tables:
#  1. a remote tail over one veth network: ublkvd vs the kernel NBD client
#     against qemu-nbd exporting the same disk from the same node;
#  2. two links vs one, each link capped with tc tbf;
#  3. failover stalls: kill -9 of the primary, and link cuts.
# Under TCG absolute figures mean little: compare the ratios.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BIN=${UBLKVD_BIN:?}
SCRATCH=${UBLKVD_SCRATCH:-/dev/vda}
RUNTIME=${BENCH_RUNTIME:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE_MB=${BENCH_SIZE_MB:-512}
TRIALS=${BENCH_TRIALS:-10}
RATE=${BENCH_LINK_RATE:-100mbit}
ONLY=${BENCH_ONLY:-}
WORK=$(mktemp -d /tmp/cluster-bench.XXXXXX)
# shellcheck source=tests/vm/lab.sh
. "$here/../tests/vm/lab.sh"
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

modprobe -a ublk_drv nbd ext4 sch_tbf
trap 'nbd-client -d /dev/nbd0 >/dev/null 2>&1; pkill qemu-nbd; lab_down || true; umount /mnt/bench 2>/dev/null || true' EXIT

wants() { [[ -z $ONLY || $1 == *"$ONLY"* ]]; }

# start_pair: storage node s serving the scratch disk as disk0, client c
# with a device for vdisk vd on it, on the networks of LAB_NETS; prints c's
# device.
start_pair() {
    lab_up s c
    lab_config s false "[tails]
disk0 = \"$SCRATCH\""
    lab_config c true
    lab_start s >&2
    lab_start c >&2
    lab_wait_member c s alive >&2
    lab_cli s add vd --size "${SIZE_MB}M" --primary s:disk0 >/dev/null
    lab_cli c add vd --size "${SIZE_MB}M" --primary s:disk0
}

# ------------------------------------------------- 1. ublkvd vs NBD, one veth
if wants nbd; then
    # Reads of never-written sectors cost qemu nothing: fill the region.
    dd if=/dev/urandom of="$SCRATCH" bs=1M count="$SIZE_MB" oflag=direct status=none
    LAB=nbdb LAB_NETS=1 LAB_DIR=$WORK/nbdb
    start_pair >"$WORK/dev"
    ublk=$(cat "$WORK/dev")
    ip netns exec "$(lab_ns s)" qemu-nbd --fork --persistent --shared=4 -x disk \
        --bind "$(lab_addr s 1)" --format=raw --cache=none --aio=io_uring "$SCRATCH"
    ip netns exec "$(lab_ns c)" nbd-client -N disk -b 4096 "$(lab_addr s 1)" 10809 /dev/nbd0 >/dev/null
    nbd=/dev/nbd0
    echo "## Remote tail over one veth: ublkvd vs kernel NBD client (qemu-nbd server)"
    echo
    echo "Each cell: median rate, and the guest CPU per I/O (µs; per MiB for MiB/s rows); QD1 rows add the"
    echo "median p50 / p99 completion latency (ms)."
    echo
    echo "| job | ublkvd | NBD | ublkvd / NBD |"
    echo "|---|---|---|---|"
    JOBS=(
        "4k randread QD1|--rw=randread --bs=4k --iodepth=1|IOPS"
        "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|IOPS"
        "4k randread QD32|--rw=randread --bs=4k --iodepth=32|IOPS"
        "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|IOPS"
        "1M seq read QD8|--rw=read --bs=1M --iodepth=8|MiB/s"
        "1M seq write QD8|--rw=write --bs=1M --iodepth=8|MiB/s"
    )
    for job in "${JOBS[@]}"; do
        IFS='|' read -r name args unit <<<"$job"
        [[ $name == *"${BENCH_JOB:-}"* ]] || continue
        declare -A runs=() cpus=() p50s=() p99s=() med=()
        dir=read
        [[ $args == *write* ]] && dir=write
        for round in $(seq "$ROUNDS"); do
            # Alternate which goes first, against drift in the host's cache.
            order=(ublk nbd)
            [ $((round % 2)) = 1 ] || order=(nbd ublk)
            for t in "${order[@]}"; do
                # shellcheck disable=SC2086 # args are words on purpose
                read -r v c < <(fio_cpu "$unit" "${!t}" $args)
                runs[$t]+="$v " cpus[$t]+="$c " p50s[$t]+="$(p50 $dir) " p99s[$t]+="$(p99 $dir) "
            done
        done
        row="| $name |"
        for t in ublk nbd; do
            med[$t]=$(printf '%s\n' ${runs[$t]} | median)
            row+=" ${med[$t]} $unit ($(printf '%s\n' ${cpus[$t]} | median) µs"
            [[ $name == *QD1 ]] && row+="; $(printf '%s\n' ${p50s[$t]} | median) / $(printf '%s\n' ${p99s[$t]} | median) ms"
            row+=") |"
        done
        echo "$row $(ratio "${med[ublk]}" "${med[nbd]}")x |"
        echo "  runs: ublkvd ${runs[ublk]}/ nbd ${runs[nbd]}/ cpu ublkvd ${cpus[ublk]}/ nbd ${cpus[nbd]}" >&2
        unset runs cpus p50s p99s med
    done
    echo
    # nbd-client -d answers 1 even when it disconnected the device.
    nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
    pkill qemu-nbd || true
    lab_down
    LAB_PID=()
fi

# ------------------------------------------------- 1b. TLS vs plaintext
# The same remote tail served by this build with its links' TLS records
# sealed by the kernel (kTLS), by this build with them in rustls
# (kernel_tls = false), and by UBLKVD_PLAIN_BIN, the build of the last
# commit before TLS; each round starts one lab per build in turn (rotating
# which goes first) and runs every job in it.
if wants tls; then
    PLAIN=${UBLKVD_PLAIN_BIN:?the tls rows need UBLKVD_PLAIN_BIN: see bench/tls.sh}
    dd if=/dev/urandom of="$SCRATCH" bs=1M count="$SIZE_MB" oflag=direct status=none
    JOBS=(
        "4k randread QD32|--rw=randread --bs=4k --iodepth=32|IOPS"
        "4k randwrite QD32|--rw=randwrite --bs=4k --iodepth=32|IOPS"
        "1M seq read QD8|--rw=read --bs=1M --iodepth=8|MiB/s"
        "1M seq write QD8|--rw=write --bs=1M --iodepth=8|MiB/s"
    )
    declare -A runs=()
    tls_bin=$BIN
    read -r -a builds <<<"${BENCH_TLS_BUILDS:-ktls rustls plain}"
    for round in $(seq "$ROUNDS"); do
        for i in "${!builds[@]}"; do
            build=${builds[$(((round + i) % ${#builds[@]}))]}
            LAB_TOP_TOML="" LAB_DEVICE_LINKS=true
            case $build in
            ktls) BIN=$tls_bin ;;
            rustls) BIN=$tls_bin LAB_TOP_TOML="kernel_tls = false" ;;
            # Older than device links.
            plain) BIN=$PLAIN LAB_DEVICE_LINKS=false ;;
            esac
            LAB=tlsb LAB_NETS=1 LAB_DIR=$WORK/tlsb-$build-$round
            start_pair >"$WORK/dev"
            ublk=$(cat "$WORK/dev")
            for job in "${JOBS[@]}"; do
                IFS='|' read -r name args unit <<<"$job"
                # shellcheck disable=SC2086 # args are words on purpose
                runs[$build/$name]+="$(run_fio "$unit" "$ublk" $args) "
            done
            # Guest CPU per I/O explains a ratio: the daemons' CPU seconds.
            cpu=0
            for node in s c; do
                cpu=$(awk -v c="$cpu" '{ print c + ($14 + $15) / 100 }' "/proc/${LAB_PID[$node]:-self}/stat" 2>/dev/null || echo "$cpu")
            done
            echo "  round $round $build: daemons' CPU ${cpu} s; links down $(cat "$LAB_DIR"/?/daemon.log | grep -c 'link down') times" >&2
            grep -h "link down" "$LAB_DIR"/?/daemon.log | head -3 >&2 || true
            lab_down
            LAB_PID=()
        done
    done
    BIN=$tls_bin
    LAB_TOP_TOML="" LAB_DEVICE_LINKS=true
    echo "## Remote tail over one veth: TLS 1.3 sealed by the kernel (kTLS) and by rustls vs plaintext (UBLKVD_PLAIN_BIN)"
    echo
    echo "| job | kTLS | rustls | plaintext | kTLS / plaintext | rustls / plaintext |"
    echo "|---|---|---|---|---|---|"
    for job in "${JOBS[@]}"; do
        IFS='|' read -r name args unit <<<"$job"
        # A build left out (BENCH_TLS_BUILDS) is a dash, its ratio nan.
        k=$(printf '%s\n' ${runs[ktls/$name]:--} | median)
        r=$(printf '%s\n' ${runs[rustls/$name]:--} | median)
        p=$(printf '%s\n' ${runs[plain/$name]:--} | median)
        echo "| $name | $k $unit | $r $unit | $p $unit | $(ratio "$k" "$p")x | $(ratio "$r" "$p")x |"
        echo "  runs: ktls ${runs[ktls/$name]:-}/ rustls ${runs[rustls/$name]:-}/ plain ${runs[plain/$name]:-}" >&2
    done
    echo
fi

# ------------------------------------------------- 2. two links vs one, capped
if wants links; then
    LAB=lnkb LAB_NETS="1 2" LAB_DIR=$WORK/lnkb
    start_pair >"$WORK/dev"
    ublk=$(cat "$WORK/dev")
    for node in s c; do
        for net in 1 2; do
            tc -n "$(lab_ns "$node")" qdisc add dev "$node$net" root tbf rate "$RATE" burst 256kb latency 100ms
        done
    done
    echo "## Two links vs one, each capped at $RATE (tc tbf)"
    echo
    echo "| job | two links | one link | two / one |"
    echo "|---|---|---|---|"
    for job in "1M seq read QD8|--rw=read --bs=1M --iodepth=8" "1M seq write QD8|--rw=write --bs=1M --iodepth=8"; do
        IFS='|' read -r name args <<<"$job"
        # shellcheck disable=SC2086
        two=$(run_fio MiB/s "$ublk" $args)
        lab_link s 2 down
        sleep 1 # the link is declared down after its heartbeats go unanswered
        # shellcheck disable=SC2086
        one=$(run_fio MiB/s "$ublk" $args)
        lab_link s 2 up
        sleep 1
        echo "| $name | $two MiB/s | $one MiB/s | $(ratio "$two" "$one")x |"
    done
    echo
    lab_down
    LAB_PID=()
fi

# ------------------------------------------------- 3. failover stalls
if wants stall; then
    lab_shared_file /mnt/bench
    LAB=stlb LAB_NETS="1 2" LAB_DIR=$WORK/stlb
    lab_up a b c
    for node in a b; do
        lab_config "$node" false "[tails]
disk0 = \"/mnt/bench/shared.img\""
    done
    lab_config c true
    for node in a b c; do lab_start "$node"; done
    lab_wait_member a b alive && lab_wait_member b a alive
    lab_wait_member c a alive && lab_wait_member c b alive
    for node in a b; do lab_cli "$node" add vd --size 256M --primary a:disk0 --secondary b:disk0 >/dev/null; done
    ublk=$(lab_cli c add vd --size 256M --primary a:disk0 --secondary b:disk0)
    dd if=/dev/urandom of="$ublk" bs=1M count=256 oflag=direct status=none

    # One trial: 4k random reads (or writes: BENCH_STALL_RW=randwrite) at
    # QD1; the event happens once requests are flowing (fio takes seconds to
    # start under TCG), and fio goes on 2 s after it. The stall is the
    # longest completion latency of the run: the request in flight when the
    # event hit waits that long for its answer (fio's clat max, less a
    # normal request's few ms, within noise).
    rw=${BENCH_STALL_RW:-randread}
    case $rw in
        randread) field=1 direction=read ;;
        randwrite) field=5 direction=write ;;
        *) echo "BENCH_STALL_RW: randread or randwrite, not $rw" >&2; exit 1 ;;
    esac
    stat=/sys/block/$(basename "$ublk")/stat
    reads_done() { awk -v f="$field" '{ print $f }' "$stat"; }
    # Runs in this shell, not a subshell: the events kill and restart
    # daemons, whose pids lab.sh keeps. Sets STALL_MS.
    stall_trial() { # event-command undo-command
        local before
        before=$(reads_done)
        fio --name=stall --filename="$ublk" --ioengine=io_uring --direct=1 --rw="$rw" \
            --bs=4k --iodepth=1 --time_based --runtime=30 --output-format=json \
            --output="$WORK/stall.json" &
        local fio_pid=$!
        while [ "$(reads_done)" -lt $((before + 200)) ]; do
            kill -0 "$fio_pid" 2>/dev/null || { echo "fio did not start" >&2; return 1; }
            sleep 0.05
        done
        eval "$1"
        sleep 2
        # fio stops on SIGINT with its report, after a line saying so.
        kill -INT "$fio_pid" 2>/dev/null || echo "fio ended before the trial did" >&2
        wait "$fio_pid" || true
        sed -n '/^{/,$p' "$WORK/stall.json" >"$WORK/stall-report.json"
        [ "$(jq '.jobs[0].error' "$WORK/stall-report.json")" = 0 ] || { echo "fio saw an error" >&2; return 1; }
        STALL_MS=$(jq -r ".jobs[0].$direction.clat_ns.max / 1000000 | floor" "$WORK/stall-report.json")
        eval "$2"
    }
    summary() { # name values...
        local name=$1; shift
        local sorted
        sorted=$(printf '%s\n' "$@" | sort -n)
        echo "| $name | $# | $(echo "$sorted" | head -1) ms | $(echo "$sorted" | median) ms | $(echo "$sorted" | tail -1) ms |"
        echo "  trials: $*" >&2
    }
    back_up() { lab_start a >/dev/null; lab_wait_reachable c vd a >/dev/null; sleep 0.5; }
    links_up() { lab_link a 1 up; lab_link a 2 up; lab_wait_reachable c vd a >/dev/null; sleep 0.5; }
    kills=() cuts=() both=()
    for _ in $(seq "$TRIALS"); do stall_trial "lab_kill a" back_up; kills+=("$STALL_MS"); done
    for _ in $(seq "$TRIALS"); do stall_trial "lab_link a 1 down" links_up; cuts+=("$STALL_MS"); done
    for _ in $(seq "$TRIALS"); do
        stall_trial "lab_link a 1 down; lab_link a 2 down" links_up
        both+=("$STALL_MS")
    done
    echo "## Failover stall (4k $rw QD1; the longest completion latency around the event)"
    echo
    echo "| event | trials | min | median | max |"
    echo "|---|---|---|---|---|"
    summary "kill -9 of the primary (failover to the secondary)" "${kills[@]}"
    summary "one of two links to the primary cut" "${cuts[@]}"
    summary "both links to the primary cut (failover to the secondary)" "${both[@]}"
    lab_down
    umount /mnt/bench
fi
