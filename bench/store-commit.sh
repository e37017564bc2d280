#!/usr/bin/env bash
# Commit latency of the configuration store (configdb/examples/store_bench.rs):
# three voters on the loopback with their redb files on this file system,
# WRITES adds one after another from the leader, then from a follower that
# forwards them. Prints the markdown rows BENCHMARKS.md records. Env:
# BENCH_WRITES (300), BENCH_RUNS (3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WRITES=${BENCH_WRITES:-300}
RUNS=${BENCH_RUNS:-3}

cargo build --release --locked -p configdb --example store_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/store_bench
echo "| run | origin | writes | median ms | p90 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|"
for run in $(seq "$RUNS"); do
    "$bin" --writes "$WRITES" | awk -v run="$run" \
        '$1 == "leader" || $1 == "follower" { printf "| %s | %s | %s | %s | %s | %s | %s |\n", run, $1, $2, $3, $4, $5, $6 }'
done
