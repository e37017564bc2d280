#!/usr/bin/env bash
# The whole test suite: unit and host integration tests (real io_uring, real
# redb files, the real daemon over its socket, a cluster in network
# namespaces), then the end-to-end suites against real /dev/ublkbN devices
# in the test VM: single-node, a three-node cluster, the replicated
# configuration store across three nodes, and mirrored vdisks, each on two
# kernels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tests/vm/install-deps.sh
cargo test --workspace --locked
cargo build --release --locked -p ublkvd
# Each suite on the kernel Debian stable ships (6.12, bookworm-backports)
# and on a current one (7.x, trixie-backports).
for kernel in 6.12 7; do
    echo "== the VM suites on kernel $kernel"
    vm=(tests/vm/run.sh --kernel "$kernel" --disk-size 2G)
    "${vm[@]}" --timeout 1200 -- \
        env UBLKVD_BIN="$PWD/target/release/ublkvd" tests/vm/e2e.sh
    "${vm[@]}" --timeout 900 -- \
        env UBLKVD_BIN="$PWD/target/release/ublkvd" VDISK_IO_BIN="$PWD/target/debug/vdisk-io" \
        tests/vm/cluster-e2e.sh
    "${vm[@]}" --timeout 900 -- \
        env UBLKVD_BIN="$PWD/target/release/ublkvd" tests/vm/store-e2e.sh
    "${vm[@]}" --timeout 900 -- \
        env UBLKVD_BIN="$PWD/target/release/ublkvd" tests/vm/mirror-e2e.sh
done
