#!/usr/bin/env bash
# Benchmarks ublkvd's mirrored vdisks (issue 7) in one VM run
# (bench/vm-mirror-bench.sh): mirrored write and read IOPS against a single
# remote tail, the initial full sync and the delta resync rate, idle and
# under load, and the foreground p99 latency during a resync against idle.
# Env: BENCH_RUNTIME (s per fio run, 5), BENCH_ROUNDS (2), BENCH_SIZE_MB
# (each vdisk, 256), BENCH_DIRTY_MB (written while the mirror is down, for
# the idle delta resync, 128), BENCH_RESYNCS (idle delta resyncs, 2),
# BENCH_LOADED (resyncs under load, 2), BENCH_ONLY (perf, scatter or
# resync: run only that part), BENCH_LATENCY_TARGET_MS (the primary's
# [mirror] resync_latency_target_ms; the daemon's default if unset),
# BENCH_JOB (run only the I/O rows whose name contains it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked -p ublkvd
tests/vm/run.sh --disk-size 6G --timeout 3000 -- env \
    UBLKVD_BIN="$PWD/target/release/ublkvd" \
    BENCH_RUNTIME="${BENCH_RUNTIME:-5}" BENCH_ROUNDS="${BENCH_ROUNDS:-2}" \
    BENCH_SIZE_MB="${BENCH_SIZE_MB:-256}" BENCH_DIRTY_MB="${BENCH_DIRTY_MB:-128}" \
    BENCH_RESYNCS="${BENCH_RESYNCS:-2}" BENCH_LOADED="${BENCH_LOADED:-2}" \
    BENCH_ONLY="${BENCH_ONLY:-}" BENCH_JOB="${BENCH_JOB:-}" \
    BENCH_LATENCY_TARGET_MS="${BENCH_LATENCY_TARGET_MS:-}" \
    bench/vm-mirror-bench.sh
