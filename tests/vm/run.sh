#!/usr/bin/env bash
# Runs a command as root in a qemu guest booting the bookworm-backports
# kernel, chrooted into this machine's / (shared read-only over 9p), for
# tests that need ublk, nbd or loop devices the host kernel cannot provide.
# See tests/vm/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${UBLKVD_VM_CACHE:-$HOME/.cache/ublkvd-vm}

usage() {
    cat >&2 <<'EOF'
usage: tests/vm/run.sh [--kernel 6.12|7] [--disk-size SIZE] [--timeout SECS] [--mem MB] -- COMMAND [ARGS...]
       tests/vm/run.sh [OPTIONS] -- 'SHELL COMMAND STRING'
Runs COMMAND as root in the test VM, in the current directory, with
UBLKVD_SCRATCH=/dev/vda (a fresh sparse disk of SIZE, default 2G). The
guest boots the bookworm-backports kernel installed here (6.12, the
default) or trixie-backports' current one (7), fetched by kernel.sh.
Exits with COMMAND's exit code; 124 on timeout (default 600 s),
125 if the guest died without reporting one.
EOF
    exit 2
}

kernel=${UBLKVD_VM_KERNEL:-6.12}
disk_size=2G
timeout=600
mem=4096
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) kernel=${2:?--kernel needs a value}; shift 2 ;;
        --disk-size) disk_size=${2:?--disk-size needs a value}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        --mem) mem=${2:?--mem needs a value}; shift 2 ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage

"$here/install-deps.sh" >/dev/null

case $kernel in
    6.12)
        # Newest installed kernel whose modules include ublk (the backports one).
        kver=$(for img in /boot/vmlinuz-*; do
            v=${img#/boot/vmlinuz-}
            if compgen -G "/lib/modules/$v/kernel/drivers/block/ublk_drv.ko*" >/dev/null; then
                echo "$v"
            fi
        done | sort -V | tail -n 1)
        if [ -z "$kver" ]; then
            echo "run.sh: no kernel in /boot has ublk_drv in /lib/modules" >&2
            exit 1
        fi
        vmlinuz=/boot/vmlinuz-$kver
        moddir=/lib/modules/$kver
        ;;
    7)
        # In the cache, not in /lib/modules: init mounts it there in the guest.
        eval "$(UBLKVD_VM_CACHE=$cache "$here/kernel.sh" trixie-backports)"
        ;;
    *) usage ;;
esac

# Only what it takes to mount the 9p root and see the scratch disk; the
# command modprobes everything else from the host's /lib/modules.
modules=(netfs 9pnet 9pnet_virtio 9p virtio_blk)

mkdir -p "$cache"
key=$({ cat "$here/init"; echo "$kver ${modules[*]}"; } | sha256sum | cut -c 1-16)
initramfs=$cache/initramfs-$kver-$key.cpio.gz
if [ ! -f "$initramfs" ]; then
    stage=$(mktemp -d "$cache/stage.XXXXXX")
    trap 'rm -rf "$stage" "$stage.cpio.gz"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,modules}
    cp /bin/busybox "$stage/bin/"
    for applet in $(busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
    done
    install -m 755 "$here/init" "$stage/init"
    # The kernel loads modules on demand (a crypto algorithm, a TCP ULP)
    # with /sbin/modprobe in init's root, this initramfs: it runs the
    # host's, chrooted into the guest's root.
    mkdir -p "$stage/sbin"
    printf '#!/bin/sh\nexec chroot /newroot /sbin/modprobe "$@"\n' >"$stage/sbin/modprobe"
    chmod 755 "$stage/sbin/modprobe"
    # modules.dep lists each module's full dependency closure, in the
    # reverse of load order; busybox insmod wants plain .ko files.
    loaded=" "
    for m in "${modules[@]}"; do
        line=$(grep -m 1 -E "(^|/)$m\.ko(\.xz)?:" "$moddir/modules.dep") || {
            echo "run.sh: module $m not in $moddir/modules.dep" >&2
            exit 1
        }
        read -r -a deps <<<"${line#*:}"
        paths=()
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do paths+=("${deps[i]}"); done
        for path in "${paths[@]}" "${line%%:*}"; do
            ko=$(basename "${path%.xz}")
            case $loaded in *" $ko "*) continue ;; esac
            loaded="$loaded$ko "
            case $path in
                *.xz) busybox xz -dc "$moddir/$path" >"$stage/modules/$ko" ;;
                *) cp "$moddir/$path" "$stage/modules/$ko" ;;
            esac
            echo "$ko" >>"$stage/modules/order"
        done
    done
    # Built under a unique name and renamed, as concurrent runs may race here.
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$stage.cpio.gz"
    mv "$stage.cpio.gz" "$initramfs"
    find "$cache" -maxdepth 1 -name "initramfs-$kver-*.cpio.gz" ! -name "${initramfs##*/}" -delete
    rm -rf "$stage"
    trap - EXIT
fi

run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT

# The command travels as a bash script in a per-run cpio that goes in front
# of the cached initramfs (the kernel unpacks concatenated archives); %q
# quoting round-trips any argument through the guest's /bin/bash.
{
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'export HOME=/root UBLKVD_SCRATCH=/dev/vda'
    printf 'cd -- %q || exit 1\n' "$PWD"
    if [ $# -eq 1 ]; then
        printf 'exec bash -c %q\n' "$1"
    else
        printf 'exec'
        printf ' %q' "$@"
        echo
    fi
} >"$run/ublkvd-vm-cmd"
# The guest's init re-exposes the working directory if one of its tmpfs
# mounts (/tmp, /run, ...) would hide it: a CI clone may well live in /tmp.
printf '%s\n' "$PWD" >"$run/ublkvd-vm-cwd"
# Where the guest finds the kernel's modules, if not in /lib/modules.
printf '%s\n' "$moddir" >"$run/ublkvd-vm-moddir"
(cd "$run" && printf '%s\n' ublkvd-vm-cmd ublkvd-vm-cwd ublkvd-vm-moddir | cpio -o -H newc --quiet) | cat - "$initramfs" >"$run/initrd"
# Sparse, on the cache dir's filesystem: cache=none needs O_DIRECT there,
# which a host tmpfs /tmp may lack.
truncate -s "$disk_size" "$run/scratch.img"

# stdin is /dev/null so qemu neither reads nor puts a terminal in raw mode.
# Everything up to the guest's start marker is boot noise (firmware output
# and terminal resets that share the marker's line). After it, the guest
# writes raw bytes, so the filter passes lines through untouched up to the
# exit marker (which ends the last line when the command's output did not);
# after it come only the kernel's power-off messages.
# perl (essential in Debian) streams line by line where mawk would buffer.
# tee -p keeps logging when our reader goes away (| head), so the exit code
# is still found.
# --foreground keeps qemu in our process group so ^C reaches it; qemu
# then exits 0, so the interrupt must be remembered here.
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m "$mem" \
    -nographic -no-reboot -nic none \
    -kernel "$vmlinuz" -initrd "$run/initrd" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -drive "file=$run/scratch.img,if=virtio,format=raw,cache=none" \
    </dev/null | tee -p "$run/console.log" | perl -ne '
        BEGIN { $| = 1 }
        if (!$started) { $started = /UBLKVD-VM-START$/; next }
        next if $done;
        $done = s/UBLKVD-VM-EXIT=\d+\n$//;
        print'
qemu_rc=${PIPESTATUS[0]}
set -e

if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    echo "run.sh: guest timed out after ${timeout}s and was killed" >&2
    exit 124
fi
code=$(sed -n 's/.*UBLKVD-VM-EXIT=\([0-9]*\)$/\1/p' "$run/console.log" | tail -n 1)
if [ -z "$code" ]; then
    echo "run.sh: guest ended without an exit code (qemu exit $qemu_rc; kernel panic or init failure?)" >&2
    # Once the command started, its output and any panic were streamed above.
    if ! grep -q UBLKVD-VM-START "$run/console.log"; then
        # Without the firmware's terminal resets and escape sequences.
        tr -d '\r' <"$run/console.log" | sed 's/\x1bc//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g' \
            | tail -n 50 | sed 's/^/[vm console] /' >&2
    fi
    exit 125
fi
exit "$code"
