#!/usr/bin/env bash
# Simulates cluster membership (gossip/examples/gossip_sim.rs: every member a
# real foca instance, one process, virtual clock, LAN latency 0.1-1 ms) for
# 10, 100 and 1000 members at 0% and 5% packet loss, and prints the markdown
# table that BENCHMARKS.md records. The runs go in parallel, one per core at
# most. Env: BENCH_SEED (1), BENCH_KILLS (members killed one after another,
# 5), BENCH_SECONDS (long run after the kills, 300), BENCH_SECONDS_1000 (the
# same for 1000 members, 120: their bootstrap alone takes minutes of CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SEED=${BENCH_SEED:-1}
KILLS=${BENCH_KILLS:-5}
SECONDS_LONG=${BENCH_SECONDS:-300}
SECONDS_1000=${BENCH_SECONDS_1000:-120}

cargo build --release --locked -p gossip --example gossip_sim
bin=${CARGO_TARGET_DIR:-target}/release/examples/gossip_sim
out=$(mktemp -d /tmp/gossip-sim.XXXXXX)
trap 'rm -rf "$out"' EXIT

runs=()
for nodes in 1000 100 10; do
    for loss in 0 0.05; do
        runs+=("$nodes $loss")
    done
done
export SEED KILLS SECONDS_LONG SECONDS_1000 bin out
# shellcheck disable=SC2016 # expanded by the inner shell
printf '%s\n' "${runs[@]}" | xargs -P "$(nproc)" -L 1 sh -c '
    nodes=$1 loss=$2 long=$SECONDS_LONG
    [ "$nodes" = 1000 ] && long=$SECONDS_1000
    "$bin" --nodes "$nodes" --loss "$loss" --seed "$SEED" --kills "$KILLS" \
        --seconds "$long" --markdown >"$out/$nodes-$loss"
' run_one

echo "| members | loss | converged after | packets / member / s | bytes / member / s | detection-to-all min / median / max | false downs (rejoins) | observed | wall |"
echo "|---|---|---|---|---|---|---|---|---|"
for nodes in 10 100 1000; do
    for loss in 0 0.05; do
        cat "$out/$nodes-$loss"
    done
done
