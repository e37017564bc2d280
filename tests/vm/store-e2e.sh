#!/usr/bin/env bash
# ublkvd's configuration store suite, run as root inside the test VM
# (tests/vm/run.sh): three nodes a, b, c in network namespaces
# (tests/vm/lab.sh), all voters of the replicated store and all with a real
# /dev/ublkbN for the vdisk; a and b hold one twin-tailed tail (one file on
# the scratch disk). The vdisk is added once, on c: permissions follow
# `set` on every node, fio --verify runs through online moves (and a
# cancelled one), and a restart of every daemon keeps the configuration.
#
# Uses the scratch disk $UBLKVD_SCRATCH (wiped) and $UBLKVD_BIN (the binary).
# Lines starting with "figure:" are measurements (BENCHMARKS.md).
LAB=uvs
LAB_VOTERS="a b c"
# A stopped daemon stays suspect, not down, for longer than a move waits
# (5 s): a member declared down is acknowledged for by the coordinator, so
# only a live member that does not answer can cancel a move.
LAB_GOSSIP_TOML="suspect_to_down_ms = 8000"
# shellcheck source=tests/vm/suite.sh
. "$(dirname "${BASH_SOURCE[0]}")/suite.sh" store
lab_shared_file "$MNT"

lab_up a b c
for node in a b; do
    lab_config "$node" true "[tails]
disk0 = \"$MNT/shared.img\""
done
lab_config c true
for node in a b c; do lab_start "$node" || exit 1; done
for node in a b c; do
    for member in a b c; do
        [ "$node" = "$member" ] || lab_wait_member "$node" "$member" alive || exit 1
    done
done
leader=$(lab_wait_leader a b c) || exit 1
echo "store leader: $leader"

dev_of() { lab_vdisk "$1" vd .device; } # node -> its own device for vd

perms() { stat -c '%u %g %a' "$(dev_of "$1")"; } # node -> owner group mode

# wait_perms NODE "UID GID MODE": nodes apply a change on their own.
wait_perms() {
    local deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(perms "$1")" = "$2" ] && return 0
        sleep 0.1
    done
    echo "$1's device $(dev_of "$1") is $(perms "$1"), not $2"; return 1
}

# fio_verify NAME MIB OFFSET_MIB: random writes of MIB MiB on c's device,
# then a verify pass, in the background; FIO_PID and $WORK/NAME.json
fio_verify() {
    fio --name="$1" --filename="$(dev_of c)" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --size="$2M" --offset="$3M" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
        --output-format=json --output="$WORK/$1.json" &
    FIO_PID=$!
}

# fio_ok NAME: fio exited 0 and reported no error; prints its figures.
fio_ok() {
    wait "$FIO_PID" || { echo "fio $1 failed:"; cat "$WORK/$1.json"; return 1; }
    [ "$(jq '.jobs[0].error' "$WORK/$1.json")" = 0 ] || { echo "fio $1 reported an error"; return 1; }
    jq -r --arg n "$1" '.jobs[0] | "figure: fio \($n): \(.write.total_ios) writes at \(.write.iops | floor) IOPS (clat max \(.write.clat_ns.max / 1e6 | floor) ms), \(.read.total_ios) verified reads at \(.read.iops | floor) IOPS (clat max \(.read.clat_ns.max / 1e6 | floor) ms), 0 errors"' "$WORK/$1.json"
}

no_kernel_io_errors() {
    if dmesg | grep -i "ublkb.*error\|I/O error.*ublkb"; then echo "the kernel saw I/O errors"; return 1; fi
}

# timed NODE ARGS...: `ublkvd ARGS` on NODE; prints how long it took.
timed() {
    local node=$1 start rc
    shift
    start=$(date +%s%N)
    lab_cli "$node" "$@"
    rc=$?
    echo "figure: \`ublkvd $*\` on $node took $((($(date +%s%N) - start) / 1000000)) ms (exit $rc)"
    return "$rc"
}

# mapping NODE: what every node must agree on about its vdisks.
mapping() {
    lab_cli "$1" list --json | jq -c '[.[] | {name, id, epoch, primary, secondary, owner, group, mode}]'
}

# wait_epoch NODE EPOCH: until NODE has vd at EPOCH, no move pending.
wait_epoch() {
    local deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(lab_vdisk "$1" vd '"\(.epoch) \(.moving_to)"')" = "$2 null" ] && return 0
        sleep 0.1
    done
    echo "$1 has vd at $(lab_vdisk "$1" vd '"epoch \(.epoch), moving to \(.moving_to)"'), not at epoch $2"
    return 1
}

# ---------------------------------------------------------------- the tests

test_device_permissions_are_the_same_on_every_node_and_follow_set() {
    lab_cli c add vd --size 512M --primary a:disk0 --secondary b:disk0 \
        --owner 1234 --group 2345 --mode 0640
    local node
    for node in a b c; do
        lab_wait_state "$node" vd running
        echo "$node's device: $(dev_of "$node")"
        wait_perms "$node" "1234 2345 640"
    done
    # One kernel for the three nodes: three devices, three numbers.
    [ "$(for node in a b c; do dev_of "$node"; done | sort -u | wc -l)" = 3 ]
    lab_cli a set vd --owner 4321 --mode 0600
    for node in a b c; do wait_perms "$node" "4321 2345 600"; done
    [ "$(lab_vdisk b vd '"\(.owner) \(.group) \(.mode)"')" = "4321 2345 384" ]
}

test_fio_verify_runs_through_moves() {
    local before node
    before=$(lab_vdisk c vd .epoch)
    fio_verify moves 96 0
    sleep 3
    timed c move vd --primary b:disk0 --secondary a:disk0
    kill -0 "$FIO_PID" || { echo "fio ended before the first move did"; return 1; }
    for node in a b c; do wait_epoch "$node" $((before + 1)); done
    [ "$(lab_vdisk a vd .primary)" = b:disk0 ]
    sleep 2
    kill -0 "$FIO_PID" || { echo "fio ended before the second move"; return 1; }
    timed a move vd --primary a:disk0 --secondary b:disk0
    kill -0 "$FIO_PID" || echo "(fio ended during the second move)"
    fio_ok moves
    no_kernel_io_errors
    for node in a b c; do wait_epoch "$node" $((before + 2)); done
    [ "$(lab_vdisk c vd '"\(.primary) \(.secondary)"')" = "a:disk0 b:disk0" ]
    echo "figure: the application's longest wait through the moves (fio clat max): $(jq '[.jobs[0].write.clat_ns.max, .jobs[0].read.clat_ns.max] | max / 1e6 | floor' "$WORK/moves.json") ms"
    for node in a b c; do
        grep -h "reconfiguration committed\|I/O suspended and drained" "$LAB_DIR/$node/daemon.log" |
            sed "s/^/figure: $node: /"
    done
}

test_a_move_that_a_node_cannot_acknowledge_is_cancelled() {
    local before leader stopped started ms
    before=$(lab_vdisk c vd .epoch)
    leader=$(lab_wait_leader a b c)
    # The stopped node must not be the leader (the store would stop with
    # it until a new election) nor c (its device runs fio).
    stopped=b
    [ "$leader" != b ] || stopped=a
    echo "leader $leader; stopping $stopped"
    fio_verify cancel 32 256
    sleep 2
    kill -STOP "${LAB_PID[$stopped]}"
    # Gossip keeps it suspect (alive) past the move's timeout: the move
    # waits for it, and is cancelled.
    started=$(date +%s%N)
    if lab_cli c move vd --primary b:disk0 --secondary a:disk0 2>"$WORK/cancel.err"; then
        kill -CONT "${LAB_PID[$stopped]}"
        echo "the move succeeded without $stopped's acknowledgement"; return 1
    fi
    ms=$((($(date +%s%N) - started) / 1000000))
    echo "c's view of $stopped when the move ended: $(lab_member c "$stopped")"
    kill -CONT "${LAB_PID[$stopped]}"
    cat "$WORK/cancel.err"
    echo "figure: the cancelled move took $ms ms"
    grep -q "cancelled" "$WORK/cancel.err"
    grep -q "$stopped did not suspend" "$WORK/cancel.err"
    for node in a b c; do wait_epoch "$node" "$before"; done
    [ "$(lab_vdisk c vd .primary)" = a:disk0 ]
    lab_wait_member c "$stopped" alive
    fio_ok cancel
    no_kernel_io_errors
    echo "figure: the application's longest wait through the cancelled move (fio clat max): $(jq '[.jobs[0].write.clat_ns.max, .jobs[0].read.clat_ns.max] | max / 1e6 | floor' "$WORK/cancel.json") ms"
}

test_every_daemon_restarted_keeps_the_configuration() {
    local node before
    before=$(mapping c)
    echo "before: $before"
    for node in a b; do [ "$(mapping "$node")" = "$before" ]; done
    # What c wrote last, to read back through its new device.
    dd if="$MNT/shared.img" of="$WORK/head" bs=1M count=4 iflag=direct status=none
    for node in a b c; do lab_kill "$node" TERM; done
    # Together, as systemd starts a cluster's nodes after a power cut: a
    # node alone holds no lease, and its devices' first reads (the kernel's
    # partition scan) would wait for the others.
    for node in a b c; do lab_spawn "$node"; done
    for node in a b c; do lab_wait_answer "$node"; done
    for node in a b c; do
        echo "$node after: $(mapping "$node")"
        [ "$(mapping "$node")" = "$before" ]
    done
    for node in a b c; do
        lab_wait_state "$node" vd running
        wait_perms "$node" "4321 2345 600"
    done
    lab_wait_reachable c vd a
    dd if="$(dev_of c)" bs=1M count=4 iflag=direct status=none | cmp - "$WORK/head"
    # And the store takes changes again.
    lab_wait_leader a b c >/dev/null
    lab_cli b set vd --group 2346
    for node in a b c; do wait_perms "$node" "4321 2346 600"; done
}

# write4k NODE OFFSET_MIB: 4k of $WORK/block on NODE's device, direct.
write4k() {
    dd if="$WORK/block" of="$(dev_of "$1")" bs=4k seek=$(($2 * 256)) count=1 oflag=direct status=none
}

test_one_node_writes_at_a_time_until_it_releases() {
    head -c 4k /dev/urandom >"$WORK/block"
    # c wrote first (the fio runs): c holds the write role.
    [ "$(lab_vdisk a vd .writer)" = c ]
    if write4k a 300 2>"$WORK/refused"; then echo "a wrote while c holds the role"; return 1; fi
    echo "a's write: $(cat "$WORK/refused")"
    # EBADE: the block layer's reservation conflict, as a SAN refuses a
    # host without the reservation.
    grep -q "Invalid exchange" "$WORK/refused"
    dmesg | grep "reservation conflict" | tail -1
    dd if="$(dev_of a)" of=/dev/null bs=1M count=1 iflag=direct status=none
    lab_cli c release vd
    for node in a b c; do [ "$(lab_vdisk "$node" vd .writer)" = null ]; done
    write4k a 300
    [ "$(lab_vdisk c vd .writer)" = a ]
    dd if="$(dev_of c)" bs=4k skip=$((300 * 256)) count=1 iflag=direct status=none | cmp - "$WORK/block"
    if write4k c 301 2>/dev/null; then echo "c wrote while a holds the role"; return 1; fi
    # A down holder's role is taken over by the next node to write.
    lab_kill a
    lab_wait_member c a down
    write4k c 301
    [ "$(lab_vdisk c vd .writer)" = c ]
    lab_start a
}

# ---------------------------------------------------------------- the runner

TESTS=(
    test_device_permissions_are_the_same_on_every_node_and_follow_set
    test_fio_verify_runs_through_moves
    test_a_move_that_a_node_cannot_acknowledge_is_cancelled
    test_every_daemon_restarted_keeps_the_configuration
    test_one_node_writes_at_a_time_until_it_releases
)

show_logs() {
    for node in a b c; do
        echo "    $node's log (without openraft's):"
        grep -v openraft "$LAB_DIR/$node/daemon.log" | tail -20 | cut -c 1-300 | sed 's/^/    | /'
    done
}

run_tests "store e2e" show_logs "${TESTS[@]}"
