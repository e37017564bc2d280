#!/usr/bin/env bash
# ublkvd's end-to-end suite, run as root inside the test VM (tests/vm/run.sh)
# against real /dev/ublkbN devices: fio --verify, ext4, tails compared byte by
# byte, discard and write-zeroes, restarts, SIGTERM, and every refusal.
#
# Uses the scratch disk $UBLKVD_SCRATCH (wiped) and $UBLKVD_BIN (the binary).
# shellcheck source=tests/vm/suite.sh
. "$(dirname "${BASH_SOURCE[0]}")/suite.sh" e2e
SOCK=$WORK/ublkvd.sock
DATA=$WORK/data
DAEMON_PID=
# ublk_drv stays out until the first test has seen the daemon without it.
modprobe -a ext4

ublkvd() { "$BIN" --socket "$SOCK" "$@"; }

start_daemon() { # [serve flags...]
    "$BIN" serve --data-dir "$DATA" --socket "$SOCK" "$@" 2>>"$WORK/daemon.log" &
    DAEMON_PID=$!
    for _ in $(seq 200); do
        ublkvd list >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "daemon did not start:"; tail -20 "$WORK/daemon.log"; return 1
}

stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID"
    local rc=$?
    DAEMON_PID=
    return $rc
}

# expect_error NEEDLE CMD...: CMD fails with one line on stderr containing NEEDLE.
expect_error() {
    local needle=$1; shift
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [ "$rc" -eq 0 ]; then echo "expected failure: $*"; return 1; fi
    if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then echo "not one line: $err"; return 1; fi
    case "$err" in *"$needle"*) echo "refused: $err" ;; *) echo "wrong error: $err (want $needle)"; return 1 ;; esac
}

# expect_usage_error NEEDLE CMD...: CMD is refused by the argument parser:
# exit status 2, NEEDLE in what it says, and a pointer to --help.
expect_usage_error() {
    local needle=$1; shift
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [ "$rc" -ne 2 ]; then echo "expected a usage error (status 2), got $rc: $*"; return 1; fi
    case "$err" in *"$needle"*"try '--help'"*) echo "refused: $(head -1 <<<"$err")" ;; *) echo "wrong error: $err (want $needle)"; return 1 ;; esac
}

device_of() { ublkvd list --json | jq -r --arg n "$1" '.[] | select(.name == $n) | .device'; }

ublk_devices_in_kernel() { ls /sys/class/ublk-char 2>/dev/null | wc -l; }

# expect_zero_copy NAME: the vdisk's device has zero copy exactly when this
# kernel's ublk driver registers request pages itself (6.16 on).
expect_zero_copy() {
    local want=false release major minor
    release=$(uname -r) major=${release%%.*}
    minor=${release#*.} minor=${minor%%.*}
    if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 16 ]; }; then want=true; fi
    local got
    got=$(ublkvd list --json | jq -r --arg n "$1" '.[] | select(.name == $n) | .zero_copy')
    [ "$got" = "$want" ] || { echo "zero_copy of $1 is $got on $release, want $want"; return 1; }
    echo "zero copy of $1 on $release: $got"
}

# ---------------------------------------------------------------- the tests

test_add_without_ublk_drv_names_the_module() {
    [ ! -e /dev/ublk-control ] || { echo "ublk_drv already loaded"; return 1; }
    truncate -s 64M "$WORK/early.img"
    start_daemon
    expect_error "modprobe ublk_drv" ublkvd add early --size 64M --tail "$WORK/early.img"
    [ "$(ublkvd list --json)" = "[]" ]
    stop_daemon
    modprobe ublk_drv
}

test_fio_verify_on_a_block_device_tail() {
    start_daemon
    local dev
    dev=$(ublkvd add raw --size 256M --tail "$SCRATCH")
    [ -b "$dev" ]
    [ "$(blockdev --getsize64 "$dev")" = $((256 << 20)) ]
    expect_zero_copy raw
    fio --name=write-verify --filename="$dev" --rw=randwrite --bsrange=4k-64k \
        --ioengine=io_uring --direct=1 --iodepth=32 --size=100% \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
    # The same data read back again after the device is deleted and re-added.
    ublkvd del raw
    dev=$(ublkvd add raw --size 256M --tail "$SCRATCH")
    fio --name=write-verify --filename="$dev" --rw=randwrite --bsrange=4k-64k \
        --ioengine=io_uring --direct=1 --iodepth=32 --size=100% \
        --verify=crc32c --verify_only=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
    echo "fio wrote and verified 256 MiB twice over $dev"
}

test_block_device_tail_is_held_exclusively() {
    expect_error "already used by vdisk raw" ublkvd add raw2 --size 64M --tail "$SCRATCH"
    # Whoever else opens it exclusively is refused too: mke2fs does.
    if mkfs.ext4 -q -F "$SCRATCH" 2>"$WORK/mkfs.err"; then echo "made a filesystem on a claimed tail"; return 1; fi
    grep "in use" "$WORK/mkfs.err"
}

test_bytes_written_through_the_device_are_in_the_tail_at_the_same_offset() {
    local dev
    dev=$(device_of raw)
    head -c $((3 << 20)) /dev/urandom >"$WORK/pattern"
    dd if="$WORK/pattern" of="$dev" bs=1M seek=37 oflag=direct status=none
    dd if="$SCRATCH" bs=1M skip=37 count=3 iflag=direct status=none | cmp - "$WORK/pattern"
    # And the other way: what is in the tail is what the device reads.
    dd if="$dev" bs=1M skip=37 count=3 iflag=direct status=none | cmp - "$WORK/pattern"
    ublkvd del raw
    [ ! -e "$dev" ]
}

test_ext4_files_survive_del_and_add_on_the_same_tail() {
    mkfs.ext4 -q -F "$SCRATCH"
    mkdir -p "$MNT"
    mount "$SCRATCH" "$MNT"
    truncate -s 512M "$MNT/fs.img"
    local dev
    dev=$(ublkvd add fs --size 512M --tail "$MNT/fs.img")
    mkfs.ext4 -q "$dev"
    mkdir -p /mnt/vdisk
    mount "$dev" /mnt/vdisk
    for i in 1 2 3 4 5; do head -c $((i * 3 << 20)) /dev/urandom >"/mnt/vdisk/file$i"; done
    (cd /mnt/vdisk && sha256sum file* >"$WORK/sums")
    umount /mnt/vdisk
    ublkvd del fs
    [ ! -e "$dev" ]
    dev=$(ublkvd add fs --size 512M --tail "$MNT/fs.img")
    mount "$dev" /mnt/vdisk
    (cd /mnt/vdisk && sha256sum -c --quiet "$WORK/sums")
    umount /mnt/vdisk
    echo "5 files intact on $dev after del and add"
}

test_del_refuses_a_mounted_device() {
    local dev
    dev=$(device_of fs)
    mount "$dev" /mnt/vdisk
    expect_error "in use" ublkvd del fs
    [ -b "$dev" ]
    umount /mnt/vdisk
}

test_flush_reaches_the_device_as_a_cache_flush() {
    local dev sys before after
    # Raw writes get a vdisk of their own: fs keeps its filesystem.
    truncate -s 64M "$MNT/blk.img"
    dev=$(ublkvd add blk --size 64M --tail "$MNT/blk.img")
    sys=/sys/block/$(basename "$dev")
    [ "$(cat "$sys/queue/write_cache")" = "write back" ]
    before=$(awk '{print $16}' "$sys/stat")
    dd if=/dev/urandom of="$dev" bs=64k count=16 conv=fsync status=none
    sync
    after=$(awk '{print $16}' "$sys/stat")
    echo "flushes completed: $before -> $after"
    [ "$after" -gt "$before" ]
}

# An O_DSYNC write to a block device goes down as a FUA write, and then
# as the flush of the fsync it implies. Without FUA the block layer would
# follow each write with a flush of its own: two flushes a write.
test_a_dsync_write_is_one_fua_write_not_a_write_and_a_flush() {
    local dev sys before after
    dev=$(device_of blk)
    sys=/sys/block/$(basename "$dev")
    [ "$(cat "$sys/queue/fua")" = 1 ] || { echo "$dev does not advertise FUA"; return 1; }
    head -c $((32 * 4096)) /dev/urandom >"$WORK/dsync.bin"
    before=$(awk '{print $16}' "$sys/stat")
    dd if="$WORK/dsync.bin" of="$dev" bs=4k count=32 oflag=direct,dsync status=none
    after=$(awk '{print $16}' "$sys/stat")
    echo "32 O_DSYNC writes, flushes completed: $before -> $after"
    [ $((after - before)) -le 34 ] || return 1
    cmp -n $((32 * 4096)) "$WORK/dsync.bin" "$MNT/blk.img"
}

test_discard_punches_a_hole_in_the_file_tail() {
    local dev blocks_before blocks_after
    dev=$(device_of blk)
    dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
    sync "$MNT/blk.img"
    blocks_before=$(stat -c %b "$MNT/blk.img")
    blkdiscard -o $((2 << 20)) -l $((4 << 20)) "$dev"
    blocks_after=$(stat -c %b "$MNT/blk.img")
    echo "tail blocks: $blocks_before -> $blocks_after"
    [ "$blocks_after" -lt "$blocks_before" ]
    dd if="$MNT/blk.img" bs=1M skip=2 count=4 iflag=direct status=none | cmp - <(head -c $((4 << 20)) /dev/zero)
    dd if="$dev" bs=1M skip=2 count=4 iflag=direct status=none | cmp - <(head -c $((4 << 20)) /dev/zero)
    # Around the hole the data is untouched.
    [ "$(dd if="$dev" bs=1M count=1 iflag=direct status=none | tr -d '\0' | wc -c)" -gt 0 ]
}

test_write_zeroes_zeroes_exactly_its_range() {
    local dev
    dev=$(device_of blk)
    head -c $((4 << 20)) /dev/urandom >"$WORK/four"
    dd if="$WORK/four" of="$dev" bs=1M seek=16 oflag=direct status=none
    blkdiscard -z -o $((17 << 20)) -l $((1 << 20)) "$dev"
    dd if="$dev" bs=1M skip=17 count=1 iflag=direct status=none | cmp - <(head -c $((1 << 20)) /dev/zero)
    dd if="$MNT/blk.img" bs=1M skip=16 count=1 iflag=direct status=none | cmp - <(head -c $((1 << 20)) "$WORK/four")
    dd if="$MNT/blk.img" bs=1M skip=18 count=2 iflag=direct status=none | cmp - <(tail -c $((2 << 20)) "$WORK/four")
    ublkvd del blk
}

test_bad_inputs_are_refused_in_one_line_and_leave_nothing() {
    truncate -s 64M "$MNT/small.img"
    local before
    before=$(ublkvd list --json)
    expect_error "already exists" ublkvd add fs --size 64M --tail "$MNT/small.img"
    expect_error "already used by vdisk fs" ublkvd add fs2 --size 64M --tail "$MNT/fs.img"
    expect_error "already used by vdisk fs" ublkvd add fs2 --size 64M --tail "$MNT/../scratch/fs.img"
    expect_error "is in use (mounted" ublkvd add mounted --size 64M --tail "$SCRATCH"
    expect_error "larger than tail" ublkvd add big --size 65M --tail "$MNT/small.img"
    expect_error "multiple of the block size" ublkvd add odd --size 4097 --tail "$MNT/small.img"
    expect_error "cannot open tail" ublkvd add gone --size 1M --tail "$MNT/absent.img"
    expect_usage_error "invalid size" ublkvd add x --size 1.5G --tail "$MNT/small.img"
    expect_error "no vdisk named nosuch" ublkvd del nosuch
    [ "$(ublkvd list --json)" = "$before" ]
    [ "$(ublk_devices_in_kernel)" = 1 ]
}

test_read_only_vdisk_refuses_writes() {
    local dev
    dev=$(ublkvd add ro --size 64M --tail "$MNT/small.img" --read-only)
    [ "$(blockdev --getro "$dev")" = 1 ]
    if dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
        echo "wrote to a read-only device"; return 1
    fi
    dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct status=none
    ublkvd del ro
}

test_512_byte_blocks_work_with_fio_verify() {
    local dev
    dev=$(ublkvd add small512 --size 64M --tail "$MNT/small.img" --block-size 512)
    [ "$(blockdev --getss "$dev")" = 512 ]
    fio --name=v512 --filename="$dev" --rw=randwrite --bsrange=512-16k \
        --ioengine=io_uring --direct=1 --iodepth=16 --size=100% \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
    ublkvd del small512
}

test_each_device_has_its_name_in_dev_ublkvd() {
    local dev_fs dev_second
    ublkvd add second --size 64M --tail "$MNT/small.img" >/dev/null
    dev_fs=$(device_of fs)
    dev_second=$(device_of second)
    [ "$(readlink /dev/ublkvd/fs)" = "$dev_fs" ]
    [ "$(readlink /dev/ublkvd/second)" = "$dev_second" ]
    # The name opens the device itself.
    [ "$(blockdev --getsize64 /dev/ublkvd/second)" = $((64 << 20)) ]
    ublkvd del second --json | jq -e '.state == "deleted"' >/dev/null
    [ ! -L /dev/ublkvd/second ]
    [ "$(readlink /dev/ublkvd/fs)" = "$dev_fs" ]
    echo "/dev/ublkvd: $(ls /dev/ublkvd)"
}

test_detach_takes_down_this_node_s_device_until_attach_even_across_a_restart() {
    local dev
    ublkvd add nodal --size 64M --tail "$MNT/small.img" >/dev/null
    dev=$(device_of nodal)
    head -c 1M /dev/urandom >"$WORK/nodal.mib"
    dd if="$WORK/nodal.mib" of="$dev" bs=1M seek=3 oflag=direct status=none
    mkfs.ext4 -q "$dev"; mount "$dev" /mnt/vdisk
    expect_error "mounted" ublkvd detach nodal
    umount /mnt/vdisk
    dd if="$WORK/nodal.mib" of="$dev" bs=1M seek=3 oflag=direct status=none
    [ "$(ublkvd detach nodal --json | jq -r .state)" = detached ]
    [ ! -e "$dev" ]
    [ ! -L /dev/ublkvd/nodal ]
    expect_error "already detached" ublkvd detach nodal
    stop_daemon
    start_daemon
    [ "$(ublkvd list --json | jq -r '.[] | select(.name == "nodal") | .state')" = detached ]
    dev=$(ublkvd attach nodal)
    [ "$(readlink /dev/ublkvd/nodal)" = "$dev" ]
    dd if="$dev" bs=1M skip=3 count=1 iflag=direct status=none | cmp - "$WORK/nodal.mib"
    expect_error "is not detached" ublkvd attach nodal
    ublkvd del nodal
}

# The admin guide's blocks marked `device` (docs/admin-guide.md), as
# written, on a vdisk of the name the guide uses; the rest of the guide runs
# on three nodes in the host suite (walkthrough_netns).
test_the_admin_guide_s_device_blocks_run_as_written() {
    local guide blocks
    guide=$(dirname "${BASH_SOURCE[0]}")/../../docs/admin-guide.md
    blocks=$(awk '/^```sh .*device/ {inside = 1; next} /^```/ {inside = 0} inside' "$guide")
    [ -n "$blocks" ]
    ublkvd add vol1 --size 64M --tail "$MNT/small.img" >/dev/null
    # The guide's `ublkvd` is this node's: this suite's socket.
    mkdir -p "$WORK/guide-bin"
    printf '#!/bin/sh\nexec "%s" --socket "%s" "$@"\n' "$BIN" "$SOCK" >"$WORK/guide-bin/ublkvd"
    chmod +x "$WORK/guide-bin/ublkvd"
    PATH="$WORK/guide-bin:$PATH" bash -euo pipefail -c "$blocks"
    [ "$(ublkvd list --json | jq -r '.[] | select(.name == "vol1") | .state')" = running ]
    ublkvd del vol1
}

test_restart_brings_the_same_devices_back() {
    local dev_before dev_after
    dev_before=$(device_of fs)
    stop_daemon
    [ ! -e "$dev_before" ]
    start_daemon
    dev_after=$(device_of fs)
    [ "$dev_after" = "$dev_before" ]
    [ "$(readlink /dev/ublkvd/fs)" = "$dev_after" ]
    [ "$(ublkvd list --json | jq -r '.[0].state')" = running ]
    mount "$dev_after" /mnt/vdisk
    (cd /mnt/vdisk && sha256sum -c --quiet "$WORK/sums")
    umount /mnt/vdisk
    echo "$dev_after back after restart with its files"
}

test_vdisk_whose_tail_vanished_comes_back_failed_and_can_be_deleted() {
    stop_daemon
    mv "$MNT/fs.img" "$MNT/fs.img.away"
    start_daemon
    local state
    state=$(ublkvd list --json | jq -r '.[] | select(.name == "fs") | .state')
    echo "state: $state"
    case $state in "failed: cannot open tail $MNT/fs.img"*) ;; *) return 1 ;; esac
    [ "$(ublkvd list --json | jq -r '.[] | select(.name == "fs") | .device')" = null ]
    [ "$(ublk_devices_in_kernel)" = 0 ]
    ublkvd del fs
    mv "$MNT/fs.img.away" "$MNT/fs.img"
    ublkvd add fs --size 512M --tail "$MNT/fs.img" >/dev/null
}

# restart_under_fio HOW: fio --verify runs on ext4 on the fs vdisk while the
# daemon goes away (HOW: "kill -9", or "SIGTERM" of a daemon started with
# --keep-devices) and a new one takes the device over; fio must see no
# error, and the longest write completion is the stall.
restart_under_fio() {
    local how=$1 dev fio_pid stall
    dev=$(device_of fs)
    mount "$dev" /mnt/vdisk
    fio --name=restart --directory=/mnt/vdisk --size=64M --rw=randwrite --bs=4k \
        --ioengine=io_uring --direct=1 --iodepth=16 --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --verify_state_save=0 --output-format=json --output="$WORK/restart.json" &
    fio_pid=$!
    sleep 5 # fio takes seconds to start under TCG
    case $how in
        "kill -9") kill -KILL "$DAEMON_PID" ;;
        SIGTERM) kill -TERM "$DAEMON_PID" ;;
    esac
    wait "$DAEMON_PID" 2>/dev/null || true # killed: its status says so
    DAEMON_PID=
    # The device stayed, its I/O held by the kernel.
    [ -b "$dev" ] || { echo "$dev is gone"; return 1; }
    start_daemon --keep-devices || return 1
    [ "$(device_of fs)" = "$dev" ]
    grep -q "taken over with its held I/O" "$WORK/daemon.log" || { echo "no takeover logged"; return 1; }
    expect_zero_copy fs
    wait "$fio_pid" || { echo "fio failed:"; cat "$WORK/restart.json"; return 1; }
    [ "$(jq '.jobs[0].error' "$WORK/restart.json")" = 0 ]
    stall=$(jq '.jobs[0].write.clat_ns.max / 1000000 | floor' "$WORK/restart.json")
    echo "fio: $(jq '.jobs[0].write.total_ios' "$WORK/restart.json") writes verified, 0 errors; $how stall (longest write): $stall ms"
    rm -f /mnt/vdisk/restart.*
    (cd /mnt/vdisk && sha256sum -c --quiet "$WORK/sums")
    umount /mnt/vdisk
    if dmesg | grep -i "I/O error.*ublkb\|ublkb.*error"; then echo "the kernel saw I/O errors"; return 1; fi
}

test_kill_9_of_the_daemon_under_a_mounted_filesystem_fails_no_io() {
    stop_daemon
    start_daemon --keep-devices
    restart_under_fio "kill -9"
}

test_a_planned_restart_keeps_the_devices_and_fails_no_io() {
    restart_under_fio SIGTERM || return 1
    # A daemon without --keep-devices takes them over too, idle this time.
    local dev
    dev=$(device_of fs)
    stop_daemon
    start_daemon
    [ "$(device_of fs)" = "$dev" ]
}

# After the planned restarts: this one leaves I/O errors in dmesg, which
# restart_under_fio checks for.
test_a_kept_device_no_daemon_takes_over_is_deleted_and_its_held_io_fails() {
    local dev reader rc=0 deadline
    printf 'kept_device_timeout_ms = 3000\n' >"$WORK/kept.toml"
    stop_daemon
    start_daemon --config "$WORK/kept.toml" --keep-devices
    dev=$(device_of fs)
    stop_daemon
    [ -b "$dev" ]
    # A reader the kernel holds: no daemon serves the device.
    dd if="$dev" of=/dev/null bs=4k count=1 skip=7 iflag=direct status=none 2>"$WORK/held.err" &
    reader=$!
    deadline=$((SECONDS + 30))
    while kill -0 "$reader" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$reader" 2>/dev/null; then echo "the held read still waits after 30 s"; return 1; fi
    wait "$reader" || rc=$?
    echo "the held read ended: exit $rc: $(cat "$WORK/held.err")"
    [ "$rc" -ne 0 ]
    [ ! -e "$dev" ]
    grep "had no daemon for 3 s: deleted" "$WORK/daemon.log"
    if pgrep -f "ublkvd.*kept-watch" >/dev/null; then echo "the watch outlived its devices"; return 1; fi
    # The data is in the tail: the next daemon brings the vdisk back whole.
    start_daemon
    dev=$(device_of fs)
    mount "$dev" /mnt/vdisk
    (cd /mnt/vdisk && sha256sum -c --quiet "$WORK/sums")
    umount /mnt/vdisk
}

test_sigterm_removes_every_device_from_the_kernel() {
    ublkvd add second --size 64M --tail "$MNT/small.img" >/dev/null
    [ "$(ublk_devices_in_kernel)" = 2 ]
    stop_daemon
    [ "$(ublk_devices_in_kernel)" = 0 ]
    if ls /dev/ublkb* /dev/ublkc* >/dev/null 2>&1; then echo "left in /dev: $(ls /dev/ublk*)"; return 1; fi
    if [ -n "$(ls -A /dev/ublkvd)" ]; then echo "links left: $(ls -l /dev/ublkvd)"; return 1; fi
    [ ! -e "$SOCK" ]
    expect_error "is \`ublkvd serve\` running?" ublkvd list
}

# ---------------------------------------------------------------- the runner

TESTS=(
    test_add_without_ublk_drv_names_the_module
    test_fio_verify_on_a_block_device_tail
    test_block_device_tail_is_held_exclusively
    test_bytes_written_through_the_device_are_in_the_tail_at_the_same_offset
    test_ext4_files_survive_del_and_add_on_the_same_tail
    test_del_refuses_a_mounted_device
    test_flush_reaches_the_device_as_a_cache_flush
    test_a_dsync_write_is_one_fua_write_not_a_write_and_a_flush
    test_discard_punches_a_hole_in_the_file_tail
    test_write_zeroes_zeroes_exactly_its_range
    test_bad_inputs_are_refused_in_one_line_and_leave_nothing
    test_read_only_vdisk_refuses_writes
    test_512_byte_blocks_work_with_fio_verify
    test_each_device_has_its_name_in_dev_ublkvd
    test_detach_takes_down_this_node_s_device_until_attach_even_across_a_restart
    test_the_admin_guide_s_device_blocks_run_as_written
    test_restart_brings_the_same_devices_back
    test_vdisk_whose_tail_vanished_comes_back_failed_and_can_be_deleted
    test_kill_9_of_the_daemon_under_a_mounted_filesystem_fails_no_io
    test_a_planned_restart_keeps_the_devices_and_fails_no_io
    test_a_kept_device_no_daemon_takes_over_is_deleted_and_its_held_io_fails
    test_sigterm_removes_every_device_from_the_kernel
)

show_daemon_log() { echo "    daemon log:"; tail -15 "$WORK/daemon.log" | sed 's/^/    | /'; }

run_tests e2e show_daemon_log "${TESTS[@]}"
rc=$?
stop_daemon >/dev/null 2>&1 || true
exit $rc
