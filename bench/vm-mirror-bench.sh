#!/usr/bin/env bash
# Runs inside the test VM (see bench/mirror.sh): mirrored vdisks (issue 7)
# measured in one run, three nodes in network namespaces (tests/vm/lab.sh),
# all voters of the replicated store, each tail a file of its own node on
# the scratch disk's ext4. Prints markdown tables:
#  1. mirrored (a:m0 <-> b:m1) write and read IOPS and bandwidth, used on
#     its primary a and from a third node c, against a single remote tail
#     (b:t) used on a, and a local tail (a:l) on a as a reference;
#  2. the initial full sync of a new mirror, the delta resync after the
#     mirror's daemon was killed (kill -9) and BENCH_DIRTY_MB written alone,
#     idle, and the delta resync under foreground fio;
#  3. foreground p99 latency (4k QD1 on a's device) idle and during a
#     resync of the whole vdisk;
#  4. scattered writes: a mirror in 64 KiB regions (a:s0 <-> b:s1), where
#     most random writes land in a region the activity log has cleared and
#     must mark (and sync) again, against the remote tail.
# Under TCG absolute figures mean little: compare the ratios.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BIN=${UBLKVD_BIN:?}
SCRATCH=${UBLKVD_SCRATCH:-/dev/vda}
RUNTIME=${BENCH_RUNTIME:-5}
ROUNDS=${BENCH_ROUNDS:-2}
SIZE_MB=${BENCH_SIZE_MB:-256}
DIRTY_MB=${BENCH_DIRTY_MB:-128}
RESYNCS=${BENCH_RESYNCS:-2}
LOADED=${BENCH_LOADED:-2}
ONLY=${BENCH_ONLY:-}
LATENCY_TARGET_MS=${BENCH_LATENCY_TARGET_MS:-}
WORK=$(mktemp -d /tmp/mirror-bench.XXXXXX)
MNT=/mnt/mbench
LAB=mirb
LAB_DIR=$WORK/lab
LAB_VOTERS="a b c"
MIB=$((1 << 20))
# shellcheck source=tests/vm/lab.sh
. "$here/../tests/vm/lab.sh"
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

SAMPLER=""
cleanup() {
    local rc=$?
    [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        echo "FAILED (exit $rc) at $(date +%T); the daemons' last words:" >&2
        for node in a b c; do
            tail -25 "$LAB_DIR/$node/daemon.log" 2>/dev/null | sed "s/^/  $node: /" >&2
        done
    fi
    lab_down
    umount "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

nth() { awk -v n="$2" '{ print $n }' <<<"$1"; } # words n -> the nth word
wants() { [[ -z $ONLY || $1 == *"$ONLY"* ]]; }
now() { date +%s.%N; }
step() { echo "[$(date +%T)] $*" >&2; }
# cli NODE ARGS...: lab_cli with a time limit, so that a daemon that stops
# answering fails the run instead of hanging it.
cli() { local node=$1; shift; timeout 60 "$BIN" --socket "$LAB_DIR/$node/ublkvd.sock" "$@"; }
# warnings NODE MARK: NODE's log lines at WARN or ERROR after line MARK.
warnings() { tail -n +"$(($2 + 1))" "$LAB_DIR/$1/daemon.log" | grep -E " (WARN|ERROR) " | sed "s/^/  $1: /" >&2 || true; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1048576 }'; } # bytes secs -> MiB/s

# ------------------------------------------------------------------- setup
modprobe -a ublk_drv ext4
mkfs.ext4 -q -F "$SCRATCH"
mkdir -p "$MNT"
mount "$SCRATCH" "$MNT"

# diagnose NODE MARK: what NODE's daemon does: its log after line MARK,
# and every thread's stack.
diagnose() {
    local pid=${LAB_PID[$1]}
    tail -n +"$(($2 + 1))" "$LAB_DIR/$1/daemon.log" | tail -40 | sed "s/^/  $1 log: /" >&2
    for task in /proc/"$pid"/task/*; do echo "  $1 thread $(cat "$task/comm") $(cat "$task/wchan")" >&2; done
    timeout -k 5 60 gdb -p "$pid" -batch -ex 'thread apply all bt 12' 2>/dev/null |
        grep -E '^(Thread|#)' | sed "s/^/  $1 gdb: /" >&2 || true
}

# fill FILE: SIZE_MB of fio's random data, so that reads hit real extents
# and a full sync copies real data.
fill() {
    fio --name=fill --filename="$1" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
        --iodepth=8 --size="${SIZE_MB}M" --output-format=terse >/dev/null
}
# a's copies and the reference tails hold data; the mirror copies on b are
# new (sparse) files that only the full sync fills.
for t in a-m0 a-m2 a-l b-t; do fill "$MNT/$t.img"; done
for t in b-m1 b-m3 a-s0 b-s1; do truncate -s "${SIZE_MB}M" "$MNT/$t.img"; done

lab_up a b c
lab_config a true "metrics_listen = \"127.0.0.1:9477\"
[tails]
m0 = \"$MNT/a-m0.img\"
m2 = \"$MNT/a-m2.img\"
l = \"$MNT/a-l.img\"
s0 = \"$MNT/a-s0.img\"
${LATENCY_TARGET_MS:+[mirror]
resync_latency_target_ms = $LATENCY_TARGET_MS}"
lab_config b false "[tails]
m1 = \"$MNT/b-m1.img\"
m3 = \"$MNT/b-m3.img\"
t = \"$MNT/b-t.img\"
s1 = \"$MNT/b-s1.img\""
lab_config c true
for node in a b c; do lab_start "$node"; done
for node in a b c; do
    for member in a b c; do
        [ "$node" = "$member" ] || lab_wait_member "$node" "$member" alive
    done
done
echo "store leader: $(lab_wait_leader a b c)" >&2

dev_of() { lab_vdisk "$1" "$2" .device; } # node vdisk -> its device there

resync_json() { cli a resync "$1" --json; } # vdisk -> a's report

# wait_resync VDISK STATE [SECS]: until a reports VDISK in STATE ("in
# sync" also wants the store to call the mirror's copy current).
wait_resync() {
    local json="" want=$2 deadline=$((SECONDS + ${3:-60})) shown=$SECONDS
    [ "$want" = "in sync" ] && want="in sync current"
    while [ "$SECONDS" -lt "$deadline" ]; do
        json=$(resync_json "$1" 2>&1) || true
        if [ $((SECONDS - shown)) -ge 15 ]; then
            step "waiting for $1 $2: $(jq -c . <<<"$json" 2>/dev/null || echo "$json")"
            shown=$SECONDS
        fi
        case "$(jq -r '"\(.state) \(.mirror_copy)"' <<<"$json" 2>/dev/null)" in
            "$want"*) return 0 ;;
        esac
        sleep 0.2
    done
    echo "a never had $1 $2: $json" >&2
    return 1
}

# sampler_start VDISK FILE: a's resync report about every 0.3 s, one line
# each: "TIME STATE DIRTY RESYNCED RATE" (TIME the middle of the query).
sampler_start() {
    (
        while :; do
            t0=$(now)
            j=$(resync_json "$1" 2>/dev/null) || j='{}'
            t1=$(now)
            echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (a + b) / 2 }')" \
                "$(jq -r '"\(.state // "none" | gsub(" "; "_")) \(.dirty_bytes) \(.resynced_bytes) \(.rate_bytes_per_sec)"' <<<"$j")"
            sleep 0.3
        done
    ) >>"$2" 2>/dev/null &
    SAMPLER=$!
}
sampler_stop() { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""; }

# window_rate FILE FROM TO: resynced bytes per second between the first
# sample at or after FROM and the last at or before TO (MiB/s), or "-".
window_rate() {
    awk -v from="$2" -v to="$3" '
        $1 >= from && $1 <= to && $4 ~ /^[0-9]+$/ {
            if (t0 == "") { t0 = $1; r0 = $4 }
            t1 = $1; r1 = $4
        }
        END { if (t1 > t0) printf "%.1f", (r1 - r0) / (t1 - t0) / 1048576; else print "-" }' "$1"
}
# fio_window_rate FILE START END: window_rate over a fio run from START to
# END, its first second left out.
fio_window_rate() { window_rate "$1" "$(awk -v a="$2" 'BEGIN { printf "%.3f", a + 1 }')" "$3"; }

# The daemon log's lines after mark, and the time of a log line (tracing's
# UTC timestamp) in seconds.
log_mark() { wc -l <"$LAB_DIR/a/daemon.log"; }
log_since() { tail -n +"$(($1 + 1))" "$LAB_DIR/a/daemon.log"; }
log_time() { date -d "${1%% *}" +%s.%N; }
# field NAME LINE: the first NAME=NUMBER of LINE (awk, not grep | head:
# with pipefail, a reader that stops early fails the pipe).
field() { awk -v n="$1" '{ for (i = 1; i <= NF; i++) if (index($i, n "=") == 1) { print substr($i, length(n) + 2); exit } }' <<<"$2"; }
# resync_span MARK: of the first resync in a's log after line MARK, the
# bytes dirty when the side came back and the seconds from then to "resync
# done", as "BYTES SECS".
resync_span() {
    local back done_line
    back=$(log_since "$1" | awk '/mirror side back/ && !f { print; f = 1 }')
    done_line=$(log_since "$1" | awk '/mirror resync done/ && !f { print; f = 1 }')
    echo "$(field dirty_bytes "$back") $(awk -v a="$(log_time "$back")" -v b="$(log_time "$done_line")" 'BEGIN { printf "%.2f", b - a }')"
}
# left: a's report of mv as "STATE, N MiB left".
left() { resync_json mv | jq -r '"\(.state), \(.dirty_bytes / 1048576 | floor) MiB left"'; }


# The reference vdisks: a single remote tail on b, a local tail on a.
cli c add rt --size "${SIZE_MB}M" --primary b:t >/dev/null
cli c add lt --size "${SIZE_MB}M" --primary a:l >/dev/null

# ------------------------------------------------ 1. full sync of a new mirror
# full_sync RUN VDISK PRIMARY_TAIL MIRROR_TAIL: adds the mirror and waits
# for its full sync; adds a row to full_rows: what it copied, the wall time
# from the add, and the rate from the first report that shows it resyncing
# to the log's "resync done".
full_rows=()
full_sync() {
    local vd=$2 mark start samples=$WORK/full-$2.samples done_line t0 r0 t1 r1 wall
    mark=$(log_mark)
    start=$(now)
    step "adding mirror $vd"
    cli c add "$vd" --size "${SIZE_MB}M" --primary "a:$3" --mirror "b:$4" >/dev/null
    sampler_start "$vd" "$samples"
    if ! wait_resync "$vd" "in sync" "${5:-600}"; then
        sampler_stop
        step "$vd never got in sync: a's state"
        diagnose a "$mark"
        return 1
    fi
    wall=$(since "$start")
    sampler_stop
    step "$vd in sync"
    warnings a "$mark"
    done_line=$(log_since "$mark" | awk '/mirror resync done/ && !f { print; f = 1 }')
    read -r t0 r0 < <(awk '$2 == "resyncing" { print $1, $4; exit }' "$samples") || { t0=$start r0=0; }
    t1=$(log_time "$done_line")
    r1=$(field resynced_bytes "$done_line")
    echo "  full sync $vd: $(resync_json "$vd" | jq -c .)" >&2
    echo "  samples: $(awk '{ printf "%s/%s ", $2, $4 }' "$samples")" >&2
    full_rows+=("| $1 | $((r1 / MIB)) MiB | $wall s | $(mibs $((r1 - r0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')") MiB/s |")
}

full_sync 1 mv m0 m1

for node in a c; do
    for vd in mv rt lt; do lab_wait_state "$node" "$vd" running >&2; done
done
M_A=$(dev_of a mv) M_C=$(dev_of c mv) R_A=$(dev_of a rt) L_A=$(dev_of a lt)
echo "devices: mirror on a $M_A, on c $M_C; remote tail on a $R_A; local tail on a $L_A" >&2

# ------------------------------------------------ 2. mirrored vs single remote
if wants perf; then
    JOBS=(
        "4k randwrite QD1|--rw=randwrite --bs=4k --iodepth=1|IOPS"
        "4k randwrite QD16|--rw=randwrite --bs=4k --iodepth=16|IOPS"
        "1M seq write QD8|--rw=write --bs=1M --iodepth=8|MiB/s"
        "4k randread QD1|--rw=randread --bs=4k --iodepth=1|IOPS"
        "4k randread QD16|--rw=randread --bs=4k --iodepth=16|IOPS"
    )
    TARGETS=(M_A M_C R_A L_A)
    perf_rows=() cpu_rows=()
    for job in "${JOBS[@]}"; do
        IFS='|' read -r name args unit <<<"$job"
        [[ $name == *"${BENCH_JOB:-}"* ]] || continue
        step "$name"
        declare -A runs=() cpus=()
        for round in $(seq "$ROUNDS"); do
            # Rotate which target goes first, against drift.
            for k in $(seq 0 3); do
                t=${TARGETS[$(((k + round - 1) % 4))]}
                # shellcheck disable=SC2086 # args are words on purpose
                read -r v c < <(fio_cpu "$unit" "${!t}" $args)
                runs[$t]+="$v " cpus[$t]+="$c "
            done
        done
        declare -A med=() cpu=()
        for t in "${TARGETS[@]}"; do
            med[$t]=$(tr ' ' '\n' <<<"${runs[$t]}" | grep . | median)
            cpu[$t]=$(tr ' ' '\n' <<<"${cpus[$t]}" | grep . | median)
        done
        ra=() rc=()
        for r in $(seq "$ROUNDS"); do
            ra+=("$(ratio "$(nth "${runs[M_A]}" "$r")" "$(nth "${runs[R_A]}" "$r")")")
            rc+=("$(ratio "$(nth "${runs[M_C]}" "$r")" "$(nth "${runs[R_A]}" "$r")")")
        done
        perf_rows+=("| $name | ${med[M_A]} $unit | ${med[M_C]} $unit | ${med[R_A]} $unit | ${med[L_A]} $unit | $(ratio "${med[M_A]}" "${med[R_A]}")x | $(ratio "${med[M_C]}" "${med[R_A]}")x |")
        cpu_rows+=("| $name | ${cpu[M_A]} | ${cpu[M_C]} | ${cpu[R_A]} | ${cpu[L_A]} | $((cpu[R_A] + cpu[L_A])) |")
        echo "  $name runs: mirror/a ${runs[M_A]}/ mirror/c ${runs[M_C]}/ remote ${runs[R_A]}/ local ${runs[L_A]}; per-round ratios a ${ra[*]}, c ${rc[*]}; CPU µs per unit: mirror/a ${cpus[M_A]}/ mirror/c ${cpus[M_C]}/ remote ${cpus[R_A]}/ local ${cpus[L_A]}" >&2
        unset runs cpus med cpu
    done
    echo "  after the I/O rows: $(resync_json mv | jq -c .)" >&2
    echo "## Mirrored vs a single remote tail (fio, ${RUNTIME} s after 2 s ramp, ${SIZE_MB} MiB, medians of $ROUNDS)"
    echo
    echo "| job | mirrored, on a (a+b) | mirrored, from c (c→a→a+b) | single remote tail, on a (a→b) | local tail, on a | a / remote | c / remote |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${perf_rows[@]}"
    echo
    echo "Guest CPU per I/O (µs, per MiB for MiB/s; all processes, medians): a mirrored write on a does a remote write and a local one."
    echo
    echo "| job | mirrored, on a | mirrored, from c | single remote tail, on a | local tail, on a | remote + local |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${cpu_rows[@]}"
    echo
fi

# ------------------------------------------------ 2b. scattered writes
# A mirror in 64 KiB regions: random writes keep landing in regions the
# activity log's sweep cleared, each needing a mark made durable before
# the write goes out; the map's writer thread syncs the marks waiting
# together (group commit).
if wants scatter; then
    step "adding mirror ms (64 KiB regions)"
    cli c add ms --size "${SIZE_MB}M" --primary a:s0 --mirror b:s1 --region-size 64K >/dev/null
    wait_resync ms "in sync" 600
    S_A=$(dev_of a ms)
    scatter_rows=()
    for job in "4k randwrite QD1|--iodepth=1" "4k randwrite QD16|--iodepth=16"; do
        IFS='|' read -r name depth <<<"$job"
        step "scattered: $name"
        declare -A runs=()
        for round in $(seq "$ROUNDS"); do
            for k in 0 1 2; do
                t=$(nth "S_A M_A R_A" $(((k + round - 1) % 3 + 1)))
                # shellcheck disable=SC2086 # depth is words on purpose
                runs[$t]+="$(run_fio IOPS "${!t}" --rw=randwrite --bs=4k $depth) "
            done
        done
        declare -A med=()
        for t in S_A M_A R_A; do med[$t]=$(tr ' ' '\n' <<<"${runs[$t]}" | grep . | median); done
        scatter_rows+=("| $name | ${med[S_A]} IOPS | ${med[M_A]} IOPS | ${med[R_A]} IOPS | $(ratio "${med[S_A]}" "${med[R_A]}")x | $(ratio "${med[M_A]}" "${med[R_A]}")x |")
        echo "  scattered $name runs: 64K ${runs[S_A]}/ 1M ${runs[M_A]}/ remote ${runs[R_A]}" >&2
        unset runs med
    done
    echo "  ms after the scattered rows: $(resync_json ms | jq -c .)" >&2
    echo "## Scattered writes: the activity log in 64 KiB regions (fio on a, ${RUNTIME} s after 2 s ramp, ${SIZE_MB} MiB, medians of $ROUNDS)"
    echo
    echo "| job | mirrored, 64 KiB regions | mirrored, 1 MiB regions | single remote tail | 64 KiB / remote | 1 MiB / remote |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${scatter_rows[@]}"
    echo
    # Gone before the resync rows: it is mirrored to b too, and its own
    # resync would mingle with mv's in a's log.
    cli c del ms >/dev/null
fi

# ------------------------------------------------ 3. resync rate and latency
# make_stale MB: kill -9 b once mv's activity log is swept, write MB MiB
# (1M sequential) on a's device of mv; shows a's report (degraded,
# dirty_bytes). In this shell: lab.sh
# keeps the daemons' pids.
make_stale() {
    # Two activity-log sweeps first: the regions the rows before wrote
    # would be resynced too.
    sleep 5
    step "kill -9 b, $1 MiB written on a"
    lab_kill b
    fio --name=dirty --filename="$M_A" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
        --iodepth=8 --size="$1M" --output-format=terse >/dev/null
    echo "  stale: $(resync_json mv | jq -c .)" >&2
}

if wants resync; then
    wait_resync mv "in sync"
    # Delta resync, idle: b returns to find DIRTY_MB to copy, nothing else
    # running.
    idle_rows=()
    for i in $(seq "$RESYNCS"); do
        wait_resync mv "in sync"
        make_stale "$DIRTY_MB"
        mark=$(log_mark)
        b_mark=$(wc -l <"$LAB_DIR/b/daemon.log")
        start=$(now)
        samples=$WORK/idle-$i.samples
        sampler_start mv "$samples"
        step "b restarted"
        lab_start b >&2
        wait_resync mv "in sync" 600
        wall=$(since "$start")
        sampler_stop
        step "mv in sync"
        warnings a "$mark"
        warnings b "$b_mark"
        read -r dirty secs < <(resync_span "$mark")
        reported=$(awk '$2 == "resyncing" { print $5 / 1048576 }' "$samples" | median)
        idle_rows+=("| $i | $((dirty / MIB)) MiB | $wall s | $secs s | $(mibs "$dirty" "$secs") MiB/s | ${reported:-–} MiB/s |")
        echo "  samples: $(awk '{ printf "%s/%s ", $2, $4 }' "$samples")" >&2
        echo "  ${idle_rows[-1]}" >&2
    done

    # Under load: idle p99 first, then b stale with the whole vdisk dirty,
    # and the same fio jobs while the resync runs, then a heavier writer.
    lat_rows=() load_rows=()
    for i in $(seq "$LOADED"); do
        wait_resync mv "in sync"
        step "idle fio on a"
        samples=$WORK/load-$i.samples
        sampler_start mv "$samples"
        rr_idle=$(run_fio IOPS "$M_A" --rw=randread --bs=4k --iodepth=1); rr_idle_p=$(p99 read)
        rw_idle=$(run_fio IOPS "$M_A" --rw=randwrite --bs=4k --iodepth=1); rw_idle_p=$(p99 write)
        make_stale "$SIZE_MB"
        mark=$(log_mark)
        b_mark=$(wc -l <"$LAB_DIR/b/daemon.log")
        step "b restarted"
        lab_start b >&2
        wait_resync mv resyncing 60
        step "resyncing: fio on a"
        w0=$(now)
        rr_load=$(run_fio IOPS "$M_A" --rw=randread --bs=4k --iodepth=1); rr_load_p=$(p99 read)
        w1=$(now)
        s1=$(left)
        rw_load=$(run_fio IOPS "$M_A" --rw=randwrite --bs=4k --iodepth=1); rw_load_p=$(p99 write)
        w2=$(now)
        s2=$(left)
        heavy=$(run_fio IOPS "$M_A" --rw=randwrite --bs=4k --iodepth=16); heavy_p=$(p99 write)
        w3=$(now)
        s3=$(left)
        w4=$(now)
        step "fio done ($s3): waiting for the resync"
        wait_resync mv "in sync" 900
        w5=$(now)
        sampler_stop
        step "mv in sync"
        warnings a "$mark"
        warnings b "$b_mark"
        read -r dirty secs < <(resync_span "$mark")
        lat_rows+=("| $i | 4k randread QD1 | $rr_idle_p ms ($rr_idle IOPS) | $rr_load_p ms ($rr_load IOPS) | $(ratio "$rr_load_p" "$rr_idle_p")x | $s1 |")
        lat_rows+=("| $i | 4k randwrite QD1 | $rw_idle_p ms ($rw_idle IOPS) | $rw_load_p ms ($rw_load IOPS) | $(ratio "$rw_load_p" "$rw_idle_p")x | $s2 |")
        load_rows+=("| $i | 4k randread QD1 | $(fio_window_rate "$samples" "$w0" "$w1") MiB/s | $rr_load IOPS |")
        load_rows+=("| $i | 4k randwrite QD1 | $(fio_window_rate "$samples" "$w1" "$w2") MiB/s | $rw_load IOPS |")
        load_rows+=("| $i | 4k randwrite QD16 | $(fio_window_rate "$samples" "$w2" "$w3") MiB/s | $heavy IOPS (p99 $heavy_p ms); $s3 at its end |")
        load_rows+=("| $i | none (after fio) | $(window_rate "$samples" "$w4" "$w5") MiB/s | whole resync: $((dirty / MIB)) MiB in $secs s, $(mibs "$dirty" "$secs") MiB/s |")
        echo "  samples: $(awk '{ printf "%s/%s/%s ", $2, $4, $5 }' "$samples")" >&2
        # Shown now too: a later hang must not lose them.
        printf '  %s\n' "${lat_rows[@]: -2}" "${load_rows[@]: -4}" >&2
    done

fi

# A second full sync, last: in trial runs, a mirror added while another
# existed never reported in sync, and a's control socket stopped answering.
if wants resync; then
    full_sync 2 mv2 m2 m3 180 || full_rows+=("| 2 | never in sync (see the log above) | | |")

    echo "## Resync rate"
    echo
    echo "Full sync of a new ${SIZE_MB} MiB mirror (copied, add to in sync, rate from the first report while resyncing to the log's \"resync done\"):"
    echo
    echo "| run | copied | add → in sync | rate |"
    echo "|---|---|---|---|"
    printf '%s\n' "${full_rows[@]}"
    echo
    echo "Delta resync, idle: b killed (-9), ${DIRTY_MB} MiB written on a, b restarted:"
    echo
    echo "| run | dirty | restart → in sync | side back → done (log) | rate | daemon's rate (median while resyncing) |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${idle_rows[@]}"
    echo
    echo "Delta resync of the whole ${SIZE_MB} MiB under foreground fio on a's device (rate from the reports during each fio run, its first second left out):"
    echo
    echo "| run | foreground | resync rate | foreground |"
    echo "|---|---|---|---|"
    printf '%s\n' "${load_rows[@]}"
    echo
    echo "## Foreground p99 latency on a's device, idle vs during the resync"
    echo
    echo "| run | job | idle p99 | during resync p99 | ratio | resync at the fio run's end |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${lat_rows[@]}"
    echo
fi

echo "  a's mirror metrics:" >&2
ip netns exec "$(lab_ns a)" curl -sf http://127.0.0.1:9477/metrics | grep '^ublkvd_mirror_' | sed 's/^/    /' >&2 || true
