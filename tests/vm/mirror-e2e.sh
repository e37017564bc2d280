#!/usr/bin/env bash
# ublkvd's mirrored vdisks suite (issue 7), run as root inside the test VM
# (tests/vm/run.sh): three nodes a, b, c in network namespaces
# (tests/vm/lab.sh), all voters of the replicated store and all with a real
# /dev/ublkbN for every vdisk. Each node's tails are its own files on the
# scratch disk's ext4 (no shared storage): a mirrored vdisk keeps one copy on
# its primary's tail and one on its mirror's.
#
# - vd (a:m0 <-> b:m0), used on c under fio --verify: the initial full
#   resync makes the copies identical; kill -9 a (the primary) while fio
#   writes -> b takes over (epoch + 1) with no error; more writes; restart a
#   -> b resyncs only what was dirtied, then the tails are byte-identical and
#   `verify` finds no difference (and does find one made behind its back).
# - vd, now b:m0 <-> a:m0: a cut off from the majority while c writes
#   through b -> a's own writes fail, c's go on; healed -> a resyncs from b.
#   Meanwhile vs (a:m3 <-> b:m3), whose primary a is: a cannot record its
#   mirror stale, so it takes no write (fenced) and b takes vs over; healed,
#   a's copy of vs is made equal to b's.
# - N:1: va (a:m1 <-> b:m1) and vc (c:m2 <-> b:m2); kill a -> b serves va
#   and goes on mirroring vc.
#
# Usage: mirror-e2e.sh [TEST...] (default: all, in order; later tests build
# on the earlier ones' state).
# Uses the scratch disk $UBLKVD_SCRATCH (wiped) and $UBLKVD_BIN (the binary).
LAB=uvm
LAB_VOTERS="a b c"
# The store's leader switches a mirror's primary 1 s after its node is down.
LAB_STORE_TOML="failover_move_ms = 1000"
MIB=$((1 << 20))
# shellcheck source=tests/vm/suite.sh
. "$(dirname "${BASH_SOURCE[0]}")/suite.sh" mirror

# A CLI call takes about a second under TCG: one that takes a minute is a
# daemon that does not answer, and fails the test (with the daemons' logs)
# instead of hanging the suite until run.sh kills the guest.
lab_cli() {
    local node=$1 rc=0
    shift
    timeout 60 "$BIN" --socket "$LAB_DIR/$node/ublkvd.sock" "$@" || rc=$?
    [ "$rc" -ne 124 ] || echo "\`ublkvd $*\` on $node: no answer in 60 s" >&2
    return "$rc"
}

lab_scratch_fs "$MNT"

# Tails, one file each, on the scratch ext4 (O_DIRECT on 9p hangs). a's m0
# holds random data before vd exists: only the initial full resync can make
# b's (zeros) equal to it.
dd if=/dev/urandom of="$MNT/a-m0.img" bs=1M count=64 oflag=direct status=none
truncate -s 64M "$MNT/b-m0.img"
for tail in a-m1 b-m1 b-m2 c-m2; do truncate -s 32M "$MNT/$tail.img"; done
for tail in a-m3 b-m3; do truncate -s 16M "$MNT/$tail.img"; done

lab_up a b c
# Links are down after 1.5 s without a heartbeat answered (default: 3 of
# 80 ms): under TCG, with the host busy, the guest stalls for longer than
# 240 ms now and then, and every link flaps (a mirror then goes degraded,
# and a verify under way fails).
LINKS_TOML="heartbeat_interval_ms = 100
heartbeat_misses = 15"
# a's io_timeout is short: cut off from the majority, its writes must fail
# within it (test_a_cut_off_from_the_majority_...). Elsewhere the default
# (30 s) outlasts a takeover.
lab_config a true "metrics_listen = \"127.0.0.1:9477\"
$LINKS_TOML
io_timeout_ms = 8000
[tails]
m0 = \"$MNT/a-m0.img\"
m1 = \"$MNT/a-m1.img\"
m3 = \"$MNT/a-m3.img\""
lab_config b true "metrics_listen = \"127.0.0.1:9477\"
$LINKS_TOML
[tails]
m0 = \"$MNT/b-m0.img\"
m1 = \"$MNT/b-m1.img\"
m2 = \"$MNT/b-m2.img\"
m3 = \"$MNT/b-m3.img\""
lab_config c true "metrics_listen = \"127.0.0.1:9477\"
$LINKS_TOML
[tails]
m2 = \"$MNT/c-m2.img\""
for node in a b c; do lab_start "$node" || exit 1; done
for node in a b c; do
    for member in a b c; do
        [ "$node" = "$member" ] || lab_wait_member "$node" "$member" alive || exit 1
    done
done
leader=$(lab_wait_leader a b c) || exit 1
echo "store leader: $leader"

# ---------------------------------------------------------------- helpers

dev_of() { lab_vdisk "$1" "$2" .device; } # node vdisk -> its device there

# expect_error NEEDLE CMD...: CMD fails with one line on stderr containing
# NEEDLE.
expect_error() {
    local needle=$1 err rc=0
    shift
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [ "$rc" -eq 0 ]; then echo "expected a failure: $*"; return 1; fi
    if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then echo "not one line: $err"; return 1; fi
    case $err in
        *"$needle"*) echo "refused: $err" ;;
        *) echo "wrong error: $err (wanted $needle)"; return 1 ;;
    esac
}

# resync NODE VDISK [FILTER]: `ublkvd resync VDISK --json` on NODE, or what
# the jq FILTER makes of it.
resync() {
    lab_cli "$1" resync "$2" --json | jq -r "${3:-.}"
}

# wait_in_sync PRIMARY VDISK [SECS]: until PRIMARY reports VDISK in sync with
# its mirror copy current (90 s at most); prints the last report.
wait_in_sync() {
    local json="" deadline=$((SECONDS + ${3:-90})) shown=$SECONDS
    while [ "$SECONDS" -lt "$deadline" ]; do
        json=$(lab_cli "$1" resync "$2" --json 2>&1) || true
        if [ "$(jq -r '"\(.state) \(.mirror_copy)"' <<<"$json" 2>/dev/null)" = "in sync current" ]; then
            echo "$1: $2 in sync: $(jq -c . <<<"$json")"
            return 0
        fi
        if [ $((SECONDS - shown)) -ge 10 ]; then echo "  $1: $2: $json"; shown=$SECONDS; fi
        sleep 0.2
    done
    echo "$1 never had $2 in sync: $json"; return 1
}

# wait_resync_state NODE VDISK STATE: until NODE's resync report on VDISK
# is in STATE (30 s at most).
wait_resync_state() {
    local seen="" deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        seen=$(lab_cli "$1" resync "$2" --json 2>&1) || true
        [ "$(jq -r .state <<<"$seen" 2>/dev/null)" = "$3" ] && { echo "$1: $2 $3: $seen"; return 0; }
        sleep 0.2
    done
    echo "$1 never had $2 $3: $seen"; return 1
}

# wait_vdisk NODE VDISK FILTER VALUE [SECS]: until the jq FILTER of VDISK's
# entry in NODE's list gives VALUE (60 s at most).
wait_vdisk() {
    local seen="" deadline=$((SECONDS + ${5:-60}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        seen=$(lab_vdisk "$1" "$2" "$3" 2>/dev/null) || true
        [ "$seen" = "$4" ] && return 0
        sleep 0.2
    done
    echo "$1 has $2 with $3 = $seen, not $4: $(lab_vdisk "$1" "$2" tojson 2>/dev/null)"; return 1
}

# mirror_of NODE VDISK: "PRIMARY MIRROR EPOCH MIRROR_COPY" as NODE has them,
# once no move is pending.
mirror_of() { lab_vdisk "$1" "$2" '"\(.primary) \(.mirror) \(.epoch) \(.mirror_copy) \(.moving_to)"'; }

declare -A FIO_PID=()

# fio_bg NAME DEVICE OFFSET_MIB SIZE_MIB [WRITE_IOPS]: 4k random writes of
# SIZE_MIB MiB at OFFSET_MIB, each block once, at most WRITE_IOPS a second
# (default 150: long enough to span a failure), then a verify pass of every
# block; in the background, $WORK/NAME.json.
fio_bg() {
    fio --name="$1" --filename="$2" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --offset="$3M" --size="$4M" \
        --rate_iops=,"${5:-150}" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
        --output-format=json --output="$WORK/$1.json" &
    FIO_PID[$1]=$!
}

# fio_ok NAME: fio exited 0 (within 3 minutes), reported no error and
# verified every block.
fio_ok() {
    local rc=0 deadline=$((SECONDS + 180))
    while kill -0 "${FIO_PID[$1]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "${FIO_PID[$1]}" 2>/dev/null; then
        echo "fio $1 still running after 3 minutes: its I/O hangs"
        kill -9 "${FIO_PID[$1]}"
        return 1
    fi
    wait "${FIO_PID[$1]}" || rc=$?
    unset "FIO_PID[$1]"
    if [ "$rc" -ne 0 ]; then echo "fio $1 failed (exit $rc):"; cat "$WORK/$1.json"; return 1; fi
    [ "$(jq '.jobs[0].error' "$WORK/$1.json")" = 0 ] || { echo "fio $1 reported an error"; return 1; }
    [ "$(jq '.jobs[0].read.total_ios' "$WORK/$1.json")" -gt 0 ] || { echo "fio $1 verified nothing"; return 1; }
    jq -r --arg n "$1" '.jobs[0] | "fio \($n): \(.write.total_ios) writes (clat max \(.write.clat_ns.max / 1e6 | floor) ms), \(.read.total_ios) verified reads, 0 errors"' "$WORK/$1.json"
}

# wait_writing NODE VDISK PATH BEFORE: until NODE's PATH of VDISK has
# completed 150 requests more than BEFORE (lab_completed): fio is writing.
wait_writing() {
    local now deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        now=$(lab_completed "$1" "$2" "$3") || true
        [ "${now:-0}" -ge $(($4 + 150)) ] && return 0
        sleep 0.1
    done
    echo "$1 completed no writes to $2 on $3: ${now:-nothing} since $4"; return 1
}

# write_stall NAME: fio NAME's longest write, in ms.
write_stall() { jq '.jobs[0].write.clat_ns.max / 1e6 | floor' "$WORK/$1.json"; }

# no_kernel_io_errors DEVICE: the kernel logged no I/O error for DEVICE.
no_kernel_io_errors() {
    if dmesg | grep -w "${1#/dev/}" | grep -i "error"; then
        echo "the kernel saw I/O errors on $1"; return 1
    fi
}

# same_tails FILE FILE: byte-identical, read past the page cache.
same_tails() {
    echo 3 >/proc/sys/vm/drop_caches
    cmp "$1" "$2"
    echo "$1 and $2 are identical"
}

# verify_clean PRIMARY VDISK: `ublkvd verify` compares every region and
# finds no difference.
verify_clean() {
    local json size region
    json=$(lab_cli "$1" verify "$2" --json 2>&1) || { echo "verify $2 on $1 failed: $json"; return 1; }
    echo "verify $2: $(jq -c . <<<"$json")"
    size=$(lab_vdisk "$1" "$2" .size_bytes)
    region=$(jq .region_size <<<"$json")
    [ "$(jq .regions <<<"$json")" = $(((size + region - 1) / region)) ]
    [ "$(jq -c .differing <<<"$json")" = "[]" ]
    [ "$(jq .skipped_dirty <<<"$json")" = 0 ]
}

# ---------------------------------------------------------------- the tests

test_a_mirror_on_the_primary_s_own_node_is_refused() {
    expect_error "different nodes" lab_cli c add bad --size 16M --primary a:m1 --mirror a:m0
    [ -z "$(lab_vdisk c bad)" ] || { echo "bad was recorded anyway"; return 1; }
}

test_a_new_mirror_is_fully_resynced_and_runs_everywhere() {
    # Written from c and from a: these tests are about the data path's
    # fencing, not about the one-writer role (store-e2e tests that).
    lab_cli c add vd --size 64M --primary a:m0 --mirror b:m0 --region-size 1M --multi-writer
    local node
    for node in a b c; do
        lab_wait_state "$node" vd running
        echo "$node: vd on $(dev_of "$node" vd): $(mirror_of "$node" vd)"
    done
    [ "$(lab_vdisk c vd '"\(.primary) \(.mirror)"')" = "a:m0 b:m0" ]
    # One kernel, three nodes: three devices.
    [ "$(for node in a b c; do dev_of "$node" vd; done | sort -u | wc -l)" = 3 ]
    # resync runs on the primary only, and says which node that is.
    expect_error "primary, node a" lab_cli c resync vd --json
    wait_in_sync a vd
    for node in a b c; do wait_vdisk "$node" vd .mirror_copy current; done
    [ "$(resync a vd .mirror)" = b:m0 ]
    [ "$(resync a vd .size_bytes)" = $((64 * MIB)) ]
    [ "$(resync a vd .region_size)" = "$MIB" ]
    [ "$(resync a vd .dirty_bytes)" = 0 ]
    # A new mirror is copied whole: a's random bytes now on b.
    [ "$(resync a vd .resynced_bytes)" -ge $((64 * MIB)) ]
    same_tails "$MNT/a-m0.img" "$MNT/b-m0.img"
    ip netns exec "$(lab_ns a)" curl -sf http://127.0.0.1:9477/metrics | grep "^ublkvd_mirror"
    [ "$(lab_metric a 'ublkvd_mirror_in_sync{vdisk="vd"}')" = 1 ]
    [ "$(lab_metric a 'ublkvd_mirror_dirty_bytes{vdisk="vd"}')" = 0 ]
    # What c writes, a and b hold.
    head -c 1M /dev/urandom >"$WORK/mib"
    dd if="$WORK/mib" of="$(dev_of c vd)" bs=1M seek=48 oflag=direct status=none
    echo 3 >/proc/sys/vm/drop_caches
    dd if="$MNT/a-m0.img" bs=1M skip=48 count=1 status=none | cmp - "$WORK/mib"
    dd if="$MNT/b-m0.img" bs=1M skip=48 count=1 status=none | cmp - "$WORK/mib"
}

test_fio_on_c_runs_through_a_kill_of_the_primary_and_b_resyncs_only_what_changed() {
    local before dev dirty resynced completed
    dev=$(dev_of c vd)
    before=$(lab_vdisk c vd .epoch)
    completed=$(lab_completed c vd a)
    fio_bg kill "$dev" 0 8
    wait_writing c vd a "$completed"
    kill -0 "${FIO_PID[kill]}" || { echo "fio ended before the kill"; return 1; }
    echo "kill -9 a (primary of vd)"
    lab_kill a
    # The store's leader switches primary and mirror: b serves vd.
    wait_vdisk c vd '"\(.primary) \(.mirror) \(.moving_to)"' "b:m0 a:m0 null"
    wait_vdisk b vd .primary b:m0
    echo "c: $(mirror_of c vd)"
    [ "$(lab_vdisk c vd .epoch)" = $((before + 1)) ]
    # More writes, while a is down.
    fio_bg more "$dev" 16 4
    fio_ok kill
    # Writes waited for the takeover.
    echo "longest write through the kill: $(write_stall kill) ms"
    [ "$(write_stall kill)" -ge 1000 ]
    fio_ok more
    no_kernel_io_errors "$dev"
    # b records what a's copy misses: it is stale, vd degraded.
    wait_vdisk c vd .mirror_copy stale
    resync b vd tojson
    [ "$(resync b vd .state)" = degraded ]
    dirty=$(resync b vd .dirty_bytes)
    echo "dirty on b: $dirty bytes"
    # fio wrote every block of 16..20 MiB, and nothing beyond 0..8 and 16..20.
    [ "$dirty" -ge $((4 * MIB)) ]
    [ "$dirty" -le $((12 * MIB)) ]
    [ "$(lab_metric b 'ublkvd_mirror_dirty_bytes{vdisk="vd"}')" = "$dirty" ]
    [ "$(lab_metric b 'ublkvd_mirror_in_sync{vdisk="vd"}')" = 0 ]
    echo "restart a"
    lab_start a
    lab_wait_member b a alive
    wait_vdisk a vd '"\(.primary) \(.mirror)"' "b:m0 a:m0"
    # --watch shows progress until in sync.
    timeout 120 "$BIN" --socket "$LAB_DIR/b/ublkvd.sock" resync vd --watch </dev/null
    wait_in_sync b vd
    resynced=$(resync b vd .resynced_bytes)
    echo "resynced by b: $resynced bytes of $((64 * MIB)) (dirty was $dirty)"
    [ "$resynced" -ge "$dirty" ]
    [ "$resynced" -lt $((32 * MIB)) ]
    [ "$(resync b vd .full)" = false ]
    for node in a b c; do wait_vdisk "$node" vd .mirror_copy current; done
    [ "$(lab_metric b 'ublkvd_mirror_in_sync{vdisk="vd"}')" = 1 ]
    [ "$(lab_metric b 'ublkvd_mirror_dirty_bytes{vdisk="vd"}')" = 0 ]
    [ "$(lab_metric b 'ublkvd_mirror_resynced_bytes_total{vdisk="vd"}')" -ge "$resynced" ]
    same_tails "$MNT/a-m0.img" "$MNT/b-m0.img"
    verify_clean b vd
}

test_verify_finds_a_region_changed_behind_its_back() {
    local json rc=0
    # One block of a's copy (region 40, which nothing else writes) changed
    # directly in its tail; then put back.
    dd if="$MNT/a-m0.img" of="$WORK/block" bs=4k skip=$((40 * 256 + 3)) count=1 iflag=direct status=none
    head -c 4k /dev/urandom >"$WORK/garbage"
    dd if="$WORK/garbage" of="$MNT/a-m0.img" bs=4k seek=$((40 * 256 + 3)) count=1 oflag=direct conv=notrunc status=none
    json=$(lab_cli b verify vd --json) || rc=$?
    # 4: the copies differ (1 would be a refusal, 3 no daemon).
    [ "$rc" = 4 ] || { echo "verify exited $rc with a region changed: $json"; return 1; }
    echo "verify: $(jq -c . <<<"$json")"
    [ "$(jq -c .differing <<<"$json")" = "[40]" ]
    dd if="$WORK/block" of="$MNT/a-m0.img" bs=4k seek=$((40 * 256 + 3)) count=1 oflag=direct conv=notrunc status=none
    verify_clean b vd
}

# a_write NAME DEVICE OFFSET_MIB: 4k of $WORK/a-block written on DEVICE at
# OFFSET_MIB, direct, in the background; DD_PID[NAME], $WORK/NAME.err.
declare -A DD_PID=()
a_write() {
    dd if="$WORK/a-block" of="$2" bs=4k seek=$(($3 * 256)) count=1 oflag=direct status=none \
        2>"$WORK/$1.err" &
    DD_PID[$1]=$!
}

# a_write_failed NAME: the write ended (40 s at most) with an error.
a_write_failed() {
    local rc=0 deadline=$((SECONDS + 40))
    while kill -0 "${DD_PID[$1]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "${DD_PID[$1]}" 2>/dev/null; then
        echo "a's write $1 neither completed nor failed in 40 s"; return 1
    fi
    wait "${DD_PID[$1]}" || rc=$?
    unset "DD_PID[$1]"
    echo "a's write $1 while cut off: exit $rc: $(cat "$WORK/$1.err")"
    [ "$rc" -ne 0 ]
}

test_a_cut_off_from_the_majority_cannot_write_while_c_writes_through_b() {
    local dev_c dev_a dev_as before_resynced resynced vs_epoch completed
    # b took vd over from a: b is the primary, a the mirror.
    wait_in_sync b vd
    [ "$(lab_vdisk c vd '"\(.primary) \(.mirror) \(.mirror_copy)"')" = "b:m0 a:m0 current" ]
    # vs: a is its primary, b its mirror; nobody writes it but a.
    lab_cli c add vs --size 16M --primary a:m3 --mirror b:m3 --multi-writer
    lab_wait_state a vs running
    wait_in_sync a vs
    vs_epoch=$(lab_vdisk c vs .epoch)
    dev_c=$(dev_of c vd)
    dev_a=$(dev_of a vd)
    dev_as=$(dev_of a vs)
    before_resynced=$(resync b vd .resynced_bytes)
    completed=$(lab_completed c vd b)
    fio_bg cut "$dev_c" 24 8
    wait_writing c vd b "$completed"
    echo "cut both of a's links"
    lab_link a 1 down; lab_link a 2 down
    kill -0 "${FIO_PID[cut]}" || { echo "fio ended before the cut"; return 1; }
    # a writes 4k on its own devices: at 56 MiB of vd (whose primary b it
    # cannot reach) and at 8 MiB of vs (whose mirror it cannot reach, nor
    # the store to record that). Both must fail, after a's io_timeout (8 s)
    # at most.
    head -c 4k /dev/urandom >"$WORK/a-block"
    a_write a-vd "$dev_a" 56
    a_write a-vs "$dev_as" 8
    # b loses its mirror and records its copy stale (b and c are a
    # majority); c's writes go on.
    wait_vdisk c vd .mirror_copy stale
    [ "$(resync b vd .state)" = degraded ]
    # a is down for b and c, and the store still calls b's copy of vs
    # current: the leader switches vs over to b.
    wait_vdisk c vs '"\(.primary) \(.mirror) \(.moving_to)"' "b:m3 a:m3 null"
    [ "$(lab_vdisk c vs .epoch)" = $((vs_epoch + 1)) ]
    fio_ok cut
    grep "mirror side\|copy stale" "$LAB_DIR/b/daemon.log" | tail -2 | cut -c 1-200
    # b cannot know at once that a is gone: a write made after the cut
    # waits until b has found a lost (its links' heartbeats, 1.5 s) and
    # recorded a's copy stale; acknowledged sooner, a would lack a write
    # while the store still called its copy current.
    echo "longest write through the cut: $(write_stall cut) ms"
    [ "$(write_stall cut)" -ge 1000 ]
    no_kernel_io_errors "$dev_c"
    a_write_failed a-vd
    a_write_failed a-vs
    # a, still primary of vs as far as it knows, takes no write.
    wait_resync_state a vs fenced
    echo "heal a's links"
    lab_link a 1 up; lab_link a 2 up
    lab_wait_member b a alive
    wait_in_sync b vd
    for node in a b c; do wait_vdisk "$node" vd .mirror_copy current; done
    resynced=$(($(resync b vd .resynced_bytes) - before_resynced))
    echo "resynced by b after the cut: $resynced bytes"
    [ "$resynced" -gt 0 ]
    [ "$resynced" -lt $((32 * MIB)) ]
    # a's write landed nowhere.
    dd if="$dev_c" bs=4k skip=$((56 * 256)) count=1 iflag=direct status=none >"$WORK/at-56m"
    if cmp -s "$WORK/at-56m" "$WORK/a-block"; then echo "a's refused write is on the vdisk"; return 1; fi
    same_tails "$MNT/a-m0.img" "$MNT/b-m0.img"
    verify_clean b vd
    # Healed, a writes through b again.
    dd if="$WORK/a-block" of="$dev_a" bs=4k seek=$((56 * 256)) count=1 oflag=direct status=none
    dd if="$dev_c" bs=4k skip=$((56 * 256)) count=1 iflag=direct status=none | cmp - "$WORK/a-block"
    # a learns that b is vs's primary now, and gets b's copy: whatever a's
    # refused write left in a's tail is overwritten.
    wait_vdisk a vs '"\(.primary) \(.mirror)"' "b:m3 a:m3"
    wait_vdisk a vs .state running
    wait_in_sync b vs
    verify_clean b vs
    same_tails "$MNT/a-m3.img" "$MNT/b-m3.img"
}

test_b_mirrors_two_primaries_and_serves_one_when_its_node_dies() {
    local va_dev vc_dev before completed
    lab_cli c add va --size 32M --primary a:m1 --mirror b:m1
    lab_cli c add vc --size 32M --primary c:m2 --mirror b:m2
    for node in a b c; do lab_wait_state "$node" va running; lab_wait_state "$node" vc running; done
    wait_in_sync a va
    wait_in_sync c vc
    va_dev=$(dev_of c va)
    vc_dev=$(dev_of b vc)
    before=$(lab_vdisk c va .epoch)
    completed=$(lab_completed c va a)
    fio_bg va "$va_dev" 0 4
    wait_writing c va a "$completed"
    echo "kill -9 a (primary of va)"
    lab_kill a
    wait_vdisk c va '"\(.primary) \(.mirror) \(.moving_to)"' "b:m1 a:m1 null"
    [ "$(lab_vdisk c va .epoch)" = $((before + 1)) ]
    # b, serving va without its mirror, still mirrors c's vc: writes from
    # b's device to vc complete on both copies.
    fio_bg vc "$vc_dev" 8 4 300
    fio_ok va
    echo "longest write through the kill: $(write_stall va) ms"
    [ "$(write_stall va)" -ge 1000 ]
    fio_ok vc
    no_kernel_io_errors "$va_dev"
    no_kernel_io_errors "$vc_dev"
    [ "$(resync b va .state)" = degraded ]
    [ "$(resync c vc '"\(.state) \(.mirror_copy) \(.dirty_bytes)"')" = "in sync current 0" ]
    wait_vdisk c vc '"\(.primary) \(.mirror) \(.mirror_copy)"' "c:m2 b:m2 current"
    same_tails "$MNT/c-m2.img" "$MNT/b-m2.img"
    verify_clean c vc
    echo "restart a"
    lab_start a
    wait_in_sync b va
    [ "$(resync b va .resynced_bytes)" -lt $((16 * MIB)) ]
    same_tails "$MNT/a-m1.img" "$MNT/b-m1.img"
}

# ---------------------------------------------------------------- the runner

TESTS=(
    test_a_mirror_on_the_primary_s_own_node_is_refused
    test_a_new_mirror_is_fully_resynced_and_runs_everywhere
    test_fio_on_c_runs_through_a_kill_of_the_primary_and_b_resyncs_only_what_changed
    test_verify_finds_a_region_changed_behind_its_back
    test_a_cut_off_from_the_majority_cannot_write_while_c_writes_through_b
    test_b_mirrors_two_primaries_and_serves_one_when_its_node_dies
)
[ $# -eq 0 ] || TESTS=("$@")

show_logs() {
    local node pid
    for pid in "${FIO_PID[@]}"; do kill "$pid" 2>/dev/null; done
    FIO_PID=()
    for node in a b c; do
        echo "    $node's log (without openraft's):"
        grep -v openraft "$LAB_DIR/$node/daemon.log" | tail -20 | cut -c 1-300 | sed 's/^/    | /'
    done
    for pid in "${DD_PID[@]}"; do kill "$pid" 2>/dev/null; done
    DD_PID=()
    # A failed test may leave a cut off or stopped.
    lab_link a 1 up; lab_link a 2 up
    [ -n "${LAB_PID[a]:-}" ] || lab_start a
}

run_tests "mirror e2e" show_logs "${TESTS[@]}"
