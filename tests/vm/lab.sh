# A cluster lab in network namespaces, sourced by the VM cluster suites and
# the cluster benchmarks. The network is the host tests' own: the
# netns-lab tool (tests/src/bin/netns-lab.rs, $LAB_TOOL, built by cargo
# test) makes it as tests/src/netns.rs defines it: namespace "$LAB-sw" holds
# two bridges, one per network, and each node of lab_up's list a namespace
# with an address on each. Its ublkvd daemon listens on port 7100 of both
# and gossips on port 7000 of network 1, with the lab's first two nodes as
# seeds.
#
# Needs: LAB (namespace prefix), LAB_DIR (configs, sockets, logs), BIN;
# SCRATCH (the scratch disk) for lab_shared_file.
# LAB_NETS (default "1 2"): the networks lab_config puts in a config.
# LAB_VOTERS (default none): nodes voting in the replicated configuration
# store; when set, every config gets a [store] section (the store answers
# on port 7200 of network 1), with LAB_STORE_TOML (settings such as
# move_timeout_ms, one a line) in it. LAB_GOSSIP_TOML: more [gossip]
# settings (timing), one a line.
# LAB_TOP_TOML: more top-level settings, one a line.
# LAB_DEVICE_LINKS=false: no device_links line.

LAB_TOOL=${LAB_TOOL:-$PWD/target/debug/netns-lab}
LAB_NODES=()
declare -A LAB_PID=()
# "node net" -> the node's address on that network, as lab_up made it.
declare -A LAB_ADDR=()

lab_ns() { echo "$LAB-$1"; }

lab_addr() { echo "${LAB_ADDR[$1 $2]}"; } # node net -> address

lab_addrs() { # node -> its peer addresses on LAB_NETS, as a TOML array
    local net list=()
    for net in ${LAB_NETS:-1 2}; do list+=("\"$(lab_addr "$1" "$net"):7100\""); done
    local IFS=,
    echo "[${list[*]}]"
}

lab_up() { # node...
    LAB_NODES=("$@")
    LAB_ADDR=()
    modprobe -a bridge veth
    local node a1 a2
    while read -r node a1 a2; do
        LAB_ADDR["$node 1"]=$a1
        LAB_ADDR["$node 2"]=$a2
    done < <("$LAB_TOOL" up "$LAB" "$@")
    [ "${#LAB_ADDR[@]}" -eq $((2 * $#)) ] || { echo "netns-lab up failed"; return 1; }
    mkdir -p "$LAB_DIR"
}

lab_down() {
    local node
    for node in "${!LAB_PID[@]}"; do lab_kill "$node" TERM; done
    for node in "${LAB_NODES[@]}"; do
        # A log without errors is no failure (grep's 1, under pipefail, in
        # an EXIT trap under set -e, would be the script's exit code).
        grep -h "ERROR\|panicked" "$LAB_DIR/$node/daemon.log" 2>/dev/null | tail -3 | sed "s/^/$node: /" || true
    done
    "$LAB_TOOL" down "$LAB" "${LAB_NODES[@]}"
    return 0
}

# lab_link NODE NET up|down: the switch side of NODE's cable to network NET,
# so a cut loses packets silently, as a pulled cable does.
lab_link() { "$LAB_TOOL" link "$LAB" "$1" "$2" "$3"; }

# lab_scratch_fs DIR: a fresh ext4 on the scratch disk $SCRATCH mounted at
# DIR, for tail files (O_DIRECT, which 9p and tmpfs do not take).
lab_scratch_fs() {
    mkfs.ext4 -q -F "$SCRATCH"
    mkdir -p "$1"
    mount "$SCRATCH" "$1"
}

# lab_shared_file DIR: lab_scratch_fs DIR, holding a 1 GiB DIR/shared.img:
# the tail two lab nodes attach as one (twin-tailed).
lab_shared_file() {
    lab_scratch_fs "$1"
    truncate -s 1G "$1/shared.img"
}

lab_gossip() { echo "$(lab_addr "$1" 1):7000"; } # node -> its gossip address

lab_store() { echo "$(lab_addr "$1" 1):7200"; } # node -> its store address

# lab_config NODE DEVICES [EXTRA_TOML]: a config that gossips with the
# cluster secret; EXTRA_TOML (tails and settings) goes before [gossip].
# With LAB_VOTERS, a [store] section follows [gossip].
lab_config() {
    local node=$1 devices=$2 extra=${3:-} dir=$LAB_DIR/$1
    mkdir -p "$dir"
    if [ ! -f "$LAB_DIR/cluster.key" ]; then
        (umask 077; head -c 32 /dev/urandom | base64 >"$LAB_DIR/cluster.key")
    fi
    {
        echo "node = \"$node\""
        echo "data_dir = \"$dir/data\""
        echo "control_socket = \"$dir/ublkvd.sock\""
        echo "listen = $(lab_addrs "$node")"
        echo "devices = $devices"
        # The lab's nodes share one kernel and its /dev: each keeps its
        # device links apart (unless LAB_DEVICE_LINKS=false, for a build
        # older than them).
        [ "${LAB_DEVICE_LINKS:-true}" = false ] || echo "device_links = \"$dir/dev\""
        [ -z "${LAB_TOP_TOML:-}" ] || printf '%s\n' "$LAB_TOP_TOML"
        printf '%s\n' "$extra"
        echo "[gossip]"
        echo "bind = \"$(lab_gossip "$node")\""
        echo "seeds = [\"$(lab_gossip "${LAB_NODES[0]}")\", \"$(lab_gossip "${LAB_NODES[1]:-${LAB_NODES[0]}}")\"]"
        echo "secret_file = \"$LAB_DIR/cluster.key\""
        [ -z "${LAB_GOSSIP_TOML:-}" ] || printf '%s\n' "$LAB_GOSSIP_TOML"
        if [ -n "${LAB_VOTERS:-}" ]; then
            local voter voters=""
            for voter in $LAB_VOTERS; do voters+="${voters:+, }$voter = \"$(lab_store "$voter")\""; done
            echo "[store]"
            echo "listen = \"$(lab_store "$node")\""
            echo "voters = { $voters }"
            [ -z "${LAB_STORE_TOML:-}" ] || printf '%s\n' "$LAB_STORE_TOML"
        fi
    } >"$dir/ublkvd.toml"
}

# lab_member NODE MEMBER: the state NODE sees MEMBER in (alive, suspect,
# down), or nothing.
lab_member() {
    lab_cli "$1" members --json | jq -r --arg m "$2" '.members[] | select(.name == $m) | .state'
}

# lab_wait_member NODE MEMBER STATE [TRIES]: until NODE sees MEMBER in STATE
# (polled every 50 ms, 600 times by default).
lab_wait_member() {
    local i
    for i in $(seq "${4:-600}"); do
        [ "$(lab_member "$1" "$2")" = "$3" ] && return 0
        sleep 0.05
    done
    echo "$1 never saw $2 $3:"; lab_cli "$1" members; return 1
}

lab_cli() { local node=$1; shift; "$BIN" --socket "$LAB_DIR/$node/ublkvd.sock" "$@"; }

lab_start() { # node: starts its daemon and waits until it answers
    lab_spawn "$1"
    lab_wait_answer "$1"
}

lab_spawn() { # node: starts its daemon
    local node=$1
    ip netns exec "$(lab_ns "$node")" "$BIN" serve --config "$LAB_DIR/$node/ublkvd.toml" \
        2>>"$LAB_DIR/$node/daemon.log" &
    LAB_PID[$node]=$!
}

lab_wait_answer() { # node: waits until its daemon answers
    local node=$1
    for _ in $(seq 600); do
        lab_cli "$node" list >/dev/null 2>&1 && return 0
        kill -0 "${LAB_PID[$node]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "daemon $node did not start:"; tail -20 "$LAB_DIR/$node/daemon.log"; return 1
}

lab_kill() { # node [signal]: kill -9 by default; a SIGTERM gets 10 s
    local node=$1 sig=${2:-KILL} pid i
    pid=${LAB_PID[$node]:-}
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    if [ "$sig" = TERM ]; then
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "daemon $node still running 10 s after SIGTERM; killing it. Its threads and last words:"
            for i in /proc/"$pid"/task/*; do echo "  $(cat "$i/comm") $(cat "$i/wchan")"; done
            tail -5 "$LAB_DIR/$node/daemon.log"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "LAB_PID[$node]"
}

# lab_metric NODE SERIES: the value of SERIES (a metric's name and labels,
# exactly as exported: 'ublkvd_members_alive' or
# 'ublkvd_mirror_in_sync{vdisk="vd"}') in NODE's /metrics, as an integer;
# nothing if it is not there. NODE's config must have metrics_listen =
# "127.0.0.1:$LAB_METRICS_PORT" (default 9477: each namespace has its own
# loopback).
lab_metric() {
    ip netns exec "$(lab_ns "$1")" curl -sf "http://127.0.0.1:${LAB_METRICS_PORT:-9477}/metrics" |
        awk -v s="$2" 'index($0, s " ") == 1 { printf "%d\n", $NF }'
}

# lab_completed NODE VDISK PATH: requests PATH (a peer, or "local") has
# completed for VDISK on NODE.
lab_completed() {
    lab_cli "$1" list --json |
        jq -r --arg v "$2" --arg p "$3" '.[] | select(.name == $v) | .paths[] | select(.name == $p) | .completed'
}

# lab_wait_reachable NODE VDISK PATH: until NODE sees PATH of VDISK reachable.
lab_wait_reachable() {
    local i
    for i in $(seq 200); do
        [ "$(lab_cli "$1" list --json | jq -r --arg v "$2" --arg p "$3" \
            '.[] | select(.name == $v) | .paths[] | select(.name == $p) | .reachable')" = true ] && return 0
        sleep 0.05
    done
    echo "$3 never became reachable from $1"; return 1
}

# lab_wait_leader NODE...: until every NODE's store names the same leader
# (30 s at most: under TCG each query takes a good part of a second);
# prints it.
lab_wait_leader() {
    local node leader seen deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        leader=""
        for node in "$@"; do
            seen=$(lab_cli "$node" store --json 2>/dev/null | jq -r '.leader // empty')
            [ -n "$seen" ] && [ "${leader:-$seen}" = "$seen" ] || { leader=""; break; }
            leader=$seen
        done
        [ -n "$leader" ] && { echo "$leader"; return 0; }
        sleep 0.1
    done
    echo "no common store leader:" >&2
    for node in "$@"; do echo "$node: $(lab_cli "$node" store --json | jq -c .)" >&2; done
    return 1
}

# lab_vdisk NODE VDISK [FILTER]: VDISK's entry in NODE's list, or what the
# jq FILTER (".state", say) makes of it.
lab_vdisk() {
    lab_cli "$1" list --json | jq -r --arg v "$2" ".[] | select(.name == \$v) | ${3:-.}"
}

# lab_wait_state NODE VDISK STATE: until NODE runs VDISK in STATE (30 s at
# most; a failure ends the wait): the store's changes reach each node on
# its own.
lab_wait_state() {
    local state deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(lab_vdisk "$1" "$2" .state)
        [ "$state" = "$3" ] && return 0
        case $state in failed:*) break ;; esac
        sleep 0.1
    done
    echo "$1 never ran $2 in state $3: $state"; return 1
}
