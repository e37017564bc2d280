#!/usr/bin/env bash
# Benchmarks a ublkvd vdisk against the kernel loop device (direct I/O) and
# the raw disk, in one VM run on one scratch disk, and prints the table that
# BENCHMARKS.md records. Under TCG absolute figures mean little: compare
# the ratios. Env: BENCH_RUNTIME (s per run, 10), BENCH_ROUNDS (3),
# BENCH_SIZE_MB (1024), BENCH_QUEUES (ublkvd queues, 1), BENCH_ONLY (run
# only the jobs whose name contains it, e.g. "4k"), BENCH_KERNEL (the guest
# kernel: 6.12 or 7, where ublk has zero copy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked -p ublkvd
tests/vm/run.sh --kernel "${BENCH_KERNEL:-6.12}" --disk-size 2G --timeout 1800 -- env \
    UBLKVD_BIN="$PWD/target/release/ublkvd" \
    BENCH_RUNTIME="${BENCH_RUNTIME:-10}" BENCH_ROUNDS="${BENCH_ROUNDS:-3}" \
    BENCH_SIZE_MB="${BENCH_SIZE_MB:-1024}" BENCH_QUEUES="${BENCH_QUEUES:-1}" \
    BENCH_ONLY="${BENCH_ONLY:-}" \
    bench/vm-bench.sh
