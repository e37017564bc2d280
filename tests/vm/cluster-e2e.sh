#!/usr/bin/env bash
# ublkvd's cluster suite, run as root inside the test VM (tests/vm/run.sh):
# three nodes in network namespaces on two bridged networks (tests/vm/lab.sh).
# a and b are storage nodes attached to one shared file (a twin-tailed
# tail); c has no tail and a real /dev/ublkbN for the vdisk. All three vote
# in the replicated configuration store, so the vdisk is added once, on c.
# fio --verify on c runs through a kill -9 of the primary (a voter: b and c
# stay a majority) and through link cuts: 0 errors.
#
# Uses the scratch disk $UBLKVD_SCRATCH (wiped) and $UBLKVD_BIN (the binary).
LAB=uvd
LAB_VOTERS="a b c"
# Routing fails over on its own here; the store's failover move (which makes
# the secondary the primary after a primary's node is down 10 s) is the
# store suite's, and would race the restart of a killed primary on a slow
# machine.
LAB_STORE_TOML="failover_move_ms = 0"
# shellcheck source=tests/vm/suite.sh
. "$(dirname "${BASH_SOURCE[0]}")/suite.sh" cluster
lab_shared_file "$MNT"

lab_up a b c
lab_config a false "[tails]
disk0 = \"$MNT/shared.img\""
# b keeps its links' TLS in rustls while a and c hand theirs to the kernel:
# the two ways meet on the wire (c to b, and the failover to b).
LAB_TOP_TOML="kernel_tls = false" lab_config b false "[tails]
disk0 = \"$MNT/shared.img\""
lab_config c true 'metrics_listen = "127.0.0.1:9477"'
for node in a b c; do lab_start "$node" || exit 1; done
# Peers are found by gossip alone: each node checks the tails it is given
# against what their holders announce.
lab_wait_member a b alive && lab_wait_member b a alive || exit 1
lab_wait_member c a alive && lab_wait_member c b alive || exit 1
leader=$(lab_wait_leader a b c) || exit 1
echo "store leader: $leader"
# One add, on c, for the whole cluster: a and b export their tail.
DEV=$(lab_cli c add vd --size 512M --primary a:disk0 --secondary b:disk0) || exit 1
echo "c's device: $DEV"

# fio_verify NAME: random writes of the whole region, then a verify pass,
# in the background; FIO_PID and $WORK/NAME.json
fio_verify() {
    fio --name="$1" --filename="$DEV" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --size=48M --offset=$(( ${2:-0} << 20 )) \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
        --output-format=json --output="$WORK/$1.json" &
    FIO_PID=$!
}

# fio_ok NAME: fio exited 0 and reported no error
fio_ok() {
    wait "$FIO_PID" || { echo "fio $1 failed:"; cat "$WORK/$1.json"; return 1; }
    [ "$(jq '.jobs[0].error' "$WORK/$1.json")" = 0 ] || { echo "fio $1 reported an error"; return 1; }
    echo "fio $1: $(jq '.jobs[0].write.total_ios' "$WORK/$1.json") writes, $(jq '.jobs[0].read.total_ios' "$WORK/$1.json") verified reads, 0 errors"
}

no_kernel_io_errors() {
    if dmesg | grep -i "ublkb.*error\|I/O error.*ublkb"; then echo "the kernel saw I/O errors"; return 1; fi
}

# ---------------------------------------------------------------- the tests

test_the_vdisk_is_exported_by_a_and_b_and_reachable_from_c() {
    lab_wait_state a vd exported
    lab_wait_state b vd exported
    # Added once: a second add anywhere is refused.
    if lab_cli a add vd --size 512M --primary a:disk0 --secondary b:disk0 2>"$WORK/again"; then
        echo "a second add of vd succeeded"; return 1
    fi
    grep "already exists" "$WORK/again"
    [ "$(lab_cli c list --json | jq -r '.[0].state')" = running ]
    # c's device under the vdisk's name; a and b run none.
    [ "$(readlink "$LAB_DIR/c/dev/vd")" = "$DEV" ]
    [ ! -L "$LAB_DIR/a/dev/vd" ]
    lab_wait_reachable c vd a
    lab_wait_reachable c vd b
    # What c writes lands in the shared tail at the same offset.
    head -c 1M /dev/urandom >"$WORK/mib"
    dd if="$WORK/mib" of="$DEV" bs=1M seek=400 oflag=direct status=none
    dd if="$MNT/shared.img" bs=1M skip=400 count=1 iflag=direct status=none | cmp - "$WORK/mib"
}

test_c_finds_its_peers_and_their_tails_by_gossip() {
    lab_cli c members
    [ "$(lab_cli c members --json | jq -r '.members[] | select(.name == "a") | .tails[0]')" = disk0 ]
    [ "$(lab_cli c members --json | jq -r '.members[] | select(.name == "b") | .links | length')" = 2 ]
    [ "$(lab_cli c members --json | jq '.config_number')" -ge 2 ]
}

# The guest kernel has kTLS (suite.sh loads tls.ko): every link's session
# of a and c goes to the kernel after its handshake, on the dialling node
# and on the serving one, and what c writes through it lands whole. b,
# told to keep its sessions in rustls, has none in the kernel, and its
# links with c (kTLS on c's side) are up.
test_links_seal_their_records_in_the_kernel() {
    local node stat
    grep -q "sealed by rustls" "$LAB_DIR/b/daemon.log"
    [ "$(ip netns exec "$(lab_ns b)" awk '$1 == "TlsCurrTxSw" { print $2 }' /proc/net/tls_stat)" = 0 ]
    lab_wait_reachable c vd b
    head -c 4M /dev/urandom >"$WORK/ktls"
    dd if="$WORK/ktls" of="$DEV" bs=1M seek=300 oflag=direct status=none
    dd if="$DEV" bs=1M skip=300 count=4 iflag=direct status=none | cmp - "$WORK/ktls"
    # A node's sessions come and go (a link renews its session after so
    # many records, or redials after a silence under load): some moment
    # within 20 s has one open each way, sealed by the kernel.
    for node in a c; do
        grep -q "sealed by the kernel (kTLS)" "$LAB_DIR/$node/daemon.log"
        local tries=0
        until stat=$(ip netns exec "$(lab_ns "$node")" cat /proc/net/tls_stat) &&
            echo "$stat" | awk '$1 == "TlsCurrTxSw" && $2 >= 1 { t = 1 } $1 == "TlsCurrRxSw" && $2 >= 1 { r = 1 } END { exit !(t && r) }'; do
            tries=$((tries + 1))
            if [ "$tries" -ge 40 ]; then
                echo "$node has no kTLS session:"; echo "$stat"; return 1
            fi
            sleep 0.5
        done
    done
}

# nobody CMD...: CMD as an unprivileged user with no group of note.
nobody() { setpriv --reuid 65534 --regid 65534 --clear-groups "$@"; }

# Strangers on c, the member host that has the device, while c's own fio
# --verify writes the region they aim at: an unprivileged user, and a tool
# speaking the wire protocol with a certificate of another cluster's CA.
# None reads a byte of vd or changes one.
test_strangers_on_a_member_host_get_no_byte_while_fio_verifies() {
    local tools report
    fio_verify strangers 0
    # The device is root:disk 0660, the control socket root's, the cluster
    # secret root's.
    if nobody dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then
        echo "nobody read the device"; return 1
    fi
    if nobody "$BIN" --socket "$LAB_DIR/c/ublkvd.sock" del vd 2>"$WORK/nobody-del"; then
        echo "nobody deleted vd"; return 1
    fi
    cat "$WORK/nobody-del"
    if nobody cat "$LAB_DIR/cluster.key" >/dev/null 2>&1; then
        echo "nobody read the cluster secret"; return 1
    fi
    # Its own secret makes it a certificate of its own CA: a refuses it.
    tools=$(mktemp -d /tmp/strangers.XXXXXX)
    chmod 755 "$tools"
    cp "$VDISK_IO" "$tools/vdisk-io"
    echo "another cluster's secret, 32 bytes" >"$tools/secret"
    chown 65534 "$tools/secret"
    chmod 600 "$tools/secret"
    # The tool runs until its stdin closes: held open here until one of its
    # reports shows a refused request (up to 60 s: a loaded guest may take
    # seconds to start it), so that a slow start cannot end it unheard.
    mkfifo "$tools/stdin"
    ip netns exec "$(lab_ns c)" setpriv --reuid 65534 --regid 65534 --clear-groups \
        "$tools/vdisk-io" --vdisk vd --blocks 64 --name c --secret-file "$tools/secret" \
        --io-timeout-ms 1500 --report-ms 500 --peer "a=$(lab_addr a 1):7100,$(lab_addr a 2):7100" \
        <"$tools/stdin" >"$tools/reports" 2>/dev/null &
    local tool=$! hold
    exec {hold}>"$tools/stdin"
    for _ in $(seq 600); do
        [ "$(tail -1 "$tools/reports" 2>/dev/null | jq '.errors' 2>/dev/null || echo 0)" -ge 1 ] 2>/dev/null && break
        sleep 0.1
    done
    exec {hold}>&-
    wait "$tool" || true
    report=$(tail -1 "$tools/reports")
    echo "the stranger's tool: $report"
    # It tried, and nothing it sent was taken.
    [ "$(jq '.errors' <<<"$report")" -ge 1 ]
    [ "$(jq '.completed.a' <<<"$report")" = 0 ]
    [ "$(jq '.writes' <<<"$report")" = 0 ]
    grep -q "TLS handshake failed" "$LAB_DIR/a/daemon.log"
    fio_ok strangers
    no_kernel_io_errors
}

incarnation() { # node member
    lab_cli "$1" members --json | jq -r --arg m "$2" '.members[] | select(.name == $m) | .incarnation'
}

test_fio_verify_runs_through_a_kill_of_the_primary() {
    local b_before a_before first_life
    b_before=$(lab_completed c vd b)
    first_life=$(incarnation c a)
    fio_verify kill 0
    sleep 3
    echo "kill -9 a"
    lab_kill a
    # Membership sees a down (default timing: about 3 s), and c's path to
    # it is unusable meanwhile.
    lab_wait_member c a down 300
    lab_wait_member b a down 300
    [ "$(lab_cli c list --json | jq -r '.[0].paths[] | select(.name == "a") | .reachable')" = false ]
    # The admin's first screen says it in plain words.
    lab_cli c status | tee "$WORK/status"
    grep -q "via secondary b" "$WORK/status"
    grep -q "member a is down" "$WORK/status"
    grep -q "primary a is unreachable" "$WORK/status"
    echo "restart a"
    lab_start a
    lab_wait_member c a alive
    echo "a's incarnation as c sees it: $first_life -> $(incarnation c a)"
    [ "$(incarnation c a)" -gt "$first_life" ]
    fio_ok kill
    no_kernel_io_errors
    echo "completed on b: $b_before -> $(lab_completed c vd b)"
    [ "$(lab_completed c vd b)" -gt "$b_before" ]
    # The restarted primary takes requests again.
    lab_wait_reachable c vd a
    a_before=$(lab_completed c vd a)
    dd if="$DEV" of=/dev/null bs=4k count=200 iflag=direct status=none
    [ "$(lab_completed c vd a)" -gt "$a_before" ]
}

# metric NAME_AND_LABELS: its value in c's /metrics, as an integer.
metric() {
    ip netns exec "$(lab_ns c)" curl -sf http://127.0.0.1:9477/metrics |
        awk -v s="$1" 'index($0, s " ") == 1 { printf "%d\n", $NF }'
}

test_metrics_count_the_io_and_the_failover() {
    local writes failovers stalls
    writes=$(metric 'ublkvd_vdisk_requests_total{vdisk="vd",op="write"}')
    failovers=$(metric 'ublkvd_vdisk_failovers_total{vdisk="vd"}')
    stalls=$(metric 'ublkvd_vdisk_failover_stall_seconds_count{vdisk="vd"}')
    echo "writes $writes, failovers $failovers, stall samples $stalls"
    [ "$writes" -ge 12288 ]   # the kill test's fio alone wrote that many
    [ "$failovers" -ge 1 ] && [ "$stalls" = "$failovers" ]
    dd if="$DEV" of=/dev/null bs=4k count=100 iflag=direct status=none
    [ "$(metric 'ublkvd_vdisk_requests_total{vdisk="vd",op="read"}')" -ge 100 ]
    [ "$(metric 'ublkvd_members_alive')" = 3 ]
}

test_fio_verify_runs_through_link_cuts() {
    local b_before
    b_before=$(lab_completed c vd b)
    fio_verify cuts 128
    sleep 2
    echo "cut a's link 1"; lab_link a 1 down
    sleep 2
    echo "restore it, cut both of a's links"; lab_link a 1 up; lab_link a 1 down; lab_link a 2 down
    sleep 3
    echo "restore both"; lab_link a 1 up; lab_link a 2 up
    fio_ok cuts
    no_kernel_io_errors
    echo "completed on b: $b_before -> $(lab_completed c vd b)"
    [ "$(lab_completed c vd b)" -gt "$b_before" ]
}

test_ext4_on_the_vdisk_keeps_its_files_across_a_failover() {
    mkfs.ext4 -q -F "$DEV"
    mkdir -p /mnt/vd
    mount "$DEV" /mnt/vd
    for i in 1 2 3; do head -c 4M /dev/urandom >"/mnt/vd/f$i"; done
    sync
    (cd /mnt/vd && md5sum f1 f2 f3 >"$WORK/sums")
    lab_kill a
    for i in 4 5; do head -c 4M /dev/urandom >"/mnt/vd/f$i"; done
    sync
    (cd /mnt/vd && md5sum f4 f5 >>"$WORK/sums")
    # a restarts only after the umount: `ip netns exec` gives it a copy of
    # the mount table, and a copy holding ext4 on the device would keep the
    # device busy until a exits (c's SIGTERM could not delete it).
    umount /mnt/vd
    lab_start a
    echo 3 >/proc/sys/vm/drop_caches
    mount "$DEV" /mnt/vd
    (cd /mnt/vd && md5sum -c --quiet "$WORK/sums")
    umount /mnt/vd
}

# ---------------------------------------------------------------- the runner

TESTS=(
    test_the_vdisk_is_exported_by_a_and_b_and_reachable_from_c
    test_c_finds_its_peers_and_their_tails_by_gossip
    test_links_seal_their_records_in_the_kernel
    test_strangers_on_a_member_host_get_no_byte_while_fio_verifies
    test_fio_verify_runs_through_a_kill_of_the_primary
    test_metrics_count_the_io_and_the_failover
    test_fio_verify_runs_through_link_cuts
    test_ext4_on_the_vdisk_keeps_its_files_across_a_failover
)

show_logs() {
    for node in a b c; do
        echo "    $node's log:"; tail -8 "$LAB_DIR/$node/daemon.log" | sed 's/^/    | /'
    done
}

run_tests "cluster e2e" show_logs "${TESTS[@]}"
