# The preamble of every VM suite, sourced first with the suite's short
# name: `. "$(dirname "${BASH_SOURCE[0]}")/suite.sh" NAME`. Strict mode, the
# binaries under test ($UBLKVD_BIN, $VDISK_IO_BIN), the scratch disk
# ($UBLKVD_SCRATCH, wiped), a work directory, the runner (runner.sh). A
# suite that sets LAB (a namespace prefix, and the lab's settings: see
# lab.sh) before it gets the lab too, in $WORK/lab, with ublk_drv loaded and
# the lab taken down (and the scratch unmounted) when the suite exits.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BIN=${UBLKVD_BIN:-$PWD/target/release/ublkvd}
# The wire protocol's test driver (a stranger's tool, in cluster-e2e).
VDISK_IO=${VDISK_IO_BIN:-$PWD/target/debug/vdisk-io}
SCRATCH=${UBLKVD_SCRATCH:-/dev/vda}
WORK=$(mktemp -d "/tmp/ublkvd-$1.XXXXXX")
MNT=/mnt/scratch
# shellcheck source=tests/vm/runner.sh
. "$here/runner.sh"

if [ -n "${LAB:-}" ]; then
    LAB_DIR=$WORK/lab
    # shellcheck source=tests/vm/lab.sh
    . "$here/lab.sh"
    # The links' sessions go to the kernel (kTLS): it loads tls and the
    # AES-GCM modules on demand (run.sh's /sbin/modprobe).
    modprobe -a ublk_drv ext4
    trap 'lab_down; umount "$MNT" 2>/dev/null' EXIT
fi
