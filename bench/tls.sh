#!/usr/bin/env bash
# TLS against plaintext on one remote tail, in one VM run (the "tls" part of
# bench/vm-cluster-bench.sh), then the failover stalls with TLS. The
# plaintext build is that of the last commit before TLS (PLAIN_COMMIT),
# built in a worktree of its own under target/. Env as bench/cluster.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PLAIN_COMMIT=${PLAIN_COMMIT:-7ccd566}
plain=target/plain-$PLAIN_COMMIT
if [ ! -x "$plain/target/release/ublkvd" ]; then
    [ -d "$plain" ] || git worktree add --detach "$plain" "$PLAIN_COMMIT" >/dev/null
    (cd "$plain" && cargo build --release --locked -p ublkvd)
fi
cargo build --release --locked -p ublkvd
tests/vm/run.sh --disk-size 2G --timeout 3000 -- env \
    UBLKVD_BIN="$PWD/target/release/ublkvd" UBLKVD_PLAIN_BIN="$PWD/$plain/target/release/ublkvd" \
    BENCH_RUNTIME="${BENCH_RUNTIME:-10}" BENCH_ROUNDS="${BENCH_ROUNDS:-3}" \
    BENCH_SIZE_MB="${BENCH_SIZE_MB:-512}" BENCH_TRIALS="${BENCH_TRIALS:-10}" \
    BENCH_ONLY="${BENCH_ONLY:-tls}" BENCH_TLS_BUILDS="${BENCH_TLS_BUILDS:-ktls rustls plain}" \
    bench/vm-cluster-bench.sh
