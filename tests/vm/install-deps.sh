#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine lacks to build ublkvd and to
# boot its test VM: libclang (libublk's bindgen), qemu, busybox, fio and the
# bookworm-backports kernel whose modules include ublk_drv and nbd; systemd
# for checking the unit file; tcpdump for the security tests' captures.
# Idempotent: a second run only checks.
#
# --plan: print what a run would change on this machine (one line each),
# change nothing. Nothing printed: nothing to do.
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
for pkg in libclang-dev busybox-static cpio fio jq e2fsprogs util-linux kmod iproute2 nbd-client systemd tcpdump; do
    installed "$pkg" || need+=("$pkg")
done

backports=/etc/apt/sources.list.d/ublkvd-backports.sources
add_backports=false
if [ ! -f "$backports" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    add_backports=true
fi

# Backports kernels are named *bpo* (older) or *+deb12* (6.12 on); compgen
# tests each pattern alone, where ls fails if either one matches nothing.
kernel_installed() { compgen -G '/boot/vmlinuz-*bpo*' >/dev/null || compgen -G '/boot/vmlinuz-*+deb12*' >/dev/null; }
need_qemu=false need_kernel=false
installed qemu-system-x86 || need_qemu=true
kernel_installed || need_kernel=true

if [ "${1:-}" = --plan ]; then
    if $add_backports; then
        echo "add the apt source $backports (Debian bookworm-backports), and run apt-get update"
    fi
    if [ ${#need[@]} -gt 0 ]; then
        echo "install packages: ${need[*]}"
    fi
    if $need_qemu; then
        echo "install qemu-system-x86 from bookworm-backports (the test VM)"
    fi
    if $need_kernel; then
        echo "install the bookworm-backports linux-image package: a kernel in /boot and its" \
            "modules in /lib/modules, which the test VM boots (the bootloader may offer it next boot)"
    fi
    exit 0
fi

if $add_backports; then
    cat >"$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

if [ ${#need[@]} -gt 0 ] || $need_qemu || $need_kernel; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    if [ ${#need[@]} -gt 0 ]; then
        apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    fi
    if $need_qemu; then
        # The machine's qemu-utils comes from backports; qemu-system must match it.
        apt-get install -y -q -t bookworm-backports --no-install-recommends qemu-system-x86 >/dev/null
    fi
    if $need_kernel; then
        # Resolve the image package the backports meta-package points at today:
        # backports replaces old versions, so no version is pinned here.
        image=$(apt-cache depends -t bookworm-backports linux-image-amd64 \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        if [ -z "$image" ]; then
            echo "install-deps: cannot resolve linux-image-amd64 in bookworm-backports" >&2
            exit 1
        fi
        apt-get install -y -q -t bookworm-backports --no-install-recommends "$image" >/dev/null
    fi
fi
echo "install-deps: ok ($(ls /boot/vmlinuz-* | tr '\n' ' '))"
