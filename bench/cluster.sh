#!/usr/bin/env bash
# Benchmarks ublkvd's remote tails in one VM run (bench/vm-cluster-bench.sh):
# vs the kernel NBD client, two links vs one under a rate cap, and failover
# stalls. Env: BENCH_RUNTIME (s per fio run, 10), BENCH_ROUNDS (3),
# BENCH_SIZE_MB (512), BENCH_TRIALS (stall trials per event, 10),
# BENCH_LINK_RATE (tbf rate per link, 100mbit), BENCH_ONLY (nbd, links or
# stall: run only that part), BENCH_JOB (run only the NBD rows whose name
# contains it, e.g. "4k"), BENCH_STALL_RW (randread or randwrite: the stall
# trials' requests), BENCH_KERNEL (the guest kernel: 6.12 or 7).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked -p ublkvd
tests/vm/run.sh --kernel "${BENCH_KERNEL:-6.12}" --disk-size 2G --timeout 3000 -- env \
    UBLKVD_BIN="$PWD/target/release/ublkvd" \
    BENCH_RUNTIME="${BENCH_RUNTIME:-10}" BENCH_ROUNDS="${BENCH_ROUNDS:-3}" \
    BENCH_SIZE_MB="${BENCH_SIZE_MB:-512}" BENCH_TRIALS="${BENCH_TRIALS:-10}" \
    BENCH_LINK_RATE="${BENCH_LINK_RATE:-100mbit}" BENCH_ONLY="${BENCH_ONLY:-}" BENCH_JOB="${BENCH_JOB:-}" \
    BENCH_STALL_RW="${BENCH_STALL_RW:-randread}" \
    bench/vm-cluster-bench.sh
