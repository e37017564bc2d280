#!/usr/bin/env bash
# ublkvd's main job on one node: run the daemon on its embedded defaults,
# create a 1 GiB file-backed vdisk and print its /dev/ublkbN.
#
# Where this kernel has ublk_drv, the daemon stays in the foreground until
# Ctrl-C (which removes the device; the data stays in the tail file). Where
# it has none, the same steps run inside the project's test VM, which then
# also puts a filesystem on the device to show it working; what that needs
# installed on this machine is listed first (tests/vm/install-deps.sh
# --plan), and asked about on a terminal. The daemon it starts, it stops.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

have_ublk() { [ -e /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; }

if [ "${1:-}" != --inside-vm ] && ! have_ublk; then
    echo "quickstart: this kernel ($(uname -r)) has no ublk_drv;" \
        "running the quickstart inside the project's test VM (tests/vm/run.sh)"
    plan=$(tests/vm/install-deps.sh --plan)
    if [ -n "$plan" ]; then
        echo "quickstart: for the VM, this machine needs (as root, with apt):"
        sed 's/^/  - /' <<<"$plan"
        if [ -t 0 ]; then
            read -r -p "quickstart: go on? [Y/n] " answer
            case "$answer" in [nN]*) echo "quickstart: nothing changed"; exit 1 ;; esac
        fi
    fi
    tests/vm/install-deps.sh >/dev/null
    cargo build --release --locked -p ublkvd
    exec tests/vm/run.sh --disk-size 2G -- scripts/quickstart.sh --inside-vm
fi

serve_flags=()
data_dir=/var/lib/ublkvd
if [ "${1:-}" = --inside-vm ]; then
    # The guest's / is the host's, read-only: the data dir goes on the VM's
    # scratch disk instead of the default /var/lib/ublkvd.
    modprobe -a ublk_drv ext4
    mkfs.ext4 -q -F "$UBLKVD_SCRATCH"
    data_dir=/mnt/ublkvd
    mkdir -p "$data_dir"
    mount "$UBLKVD_SCRATCH" "$data_dir"
    serve_flags=(--data-dir "$data_dir")
else
    cargo build --release --locked -p ublkvd
fi

ublkvd=$PWD/target/release/ublkvd
tail_file=$data_dir/tails/disk0.img
mkdir -p "$(dirname "$tail_file")"
[ -e "$tail_file" ] || truncate -s 1G "$tail_file"

"$ublkvd" serve "${serve_flags[@]}" &
daemon=$!
stop_daemon() {
    if kill -0 "$daemon" 2>/dev/null; then
        echo "quickstart: stopping the daemon it started (pid $daemon):" \
            "the device goes, the data stays in $tail_file"
        kill -TERM "$daemon"
    fi
    wait "$daemon" || true
}
trap stop_daemon EXIT
for _ in $(seq 100); do "$ublkvd" list >/dev/null 2>&1 && break; sleep 0.05; done

if ! "$ublkvd" list --json | jq -e '.[] | select(.name == "disk0")' >/dev/null; then
    "$ublkvd" add disk0 --size 1G --tail "$tail_file" >/dev/null
fi
device=$("$ublkvd" list --json | jq -r '.[] | select(.name == "disk0") | .device')
echo "vdisk disk0 is $device"
"$ublkvd" list

if [ "${1:-}" = --inside-vm ]; then
    mkfs.ext4 -q "$device"
    mkdir -p /mnt/disk0
    mount "$device" /mnt/disk0
    echo "hello from $device" >/mnt/disk0/hello
    df -h /mnt/disk0 | tail -n 1
    umount /mnt/disk0
else
    echo "ublkvd is serving $device; Ctrl-C stops it and removes the device"
    wait "$daemon"
fi
