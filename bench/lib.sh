# Helpers of the VM benchmark scripts (sourced). Needs WORK, RUNTIME, SIZE_MB.

# run_fio UNIT DEVICE FIO_ARGS...: one time-based fio job; prints its IOPS
# (UNIT = IOPS) or MiB/s.
run_fio() {
    local unit=$1 dev=$2; shift 2
    fio --name=bench --filename="$dev" --ioengine=io_uring --direct=1 \
        --time_based --runtime="$RUNTIME" --ramp_time=2 --size="${SIZE_MB}M" \
        --output-format=json "$@" >"$WORK/fio.json"
    if [ "$unit" = IOPS ]; then
        jq -r '.jobs[0] | .read.iops + .write.iops | floor' "$WORK/fio.json"
    else
        jq -r '.jobs[0] | (.read.bw + .write.bw) / 1024 | floor' "$WORK/fio.json"
    fi
}

# cpu_jiffies: the guest's busy and total CPU time so far, all CPUs
# (/proc/stat, in jiffies; iowait counts as idle).
cpu_jiffies() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
# fio_cpu UNIT DEV ARGS...: run_fio, and the guest CPU it took per I/O
# (µs, all processes: fio, the daemons, the kernel), as "RESULT CPU_US":
# CPUs busy on average over the run (ramp included: steady, it costs what
# the measured part does) over the rate. For MiB/s, the CPU is per MiB.
fio_cpu() {
    local b0 t0 b1 t1 result
    read -r b0 t0 < <(cpu_jiffies)
    result=$(run_fio "$@")
    read -r b1 t1 < <(cpu_jiffies)
    echo "$result $(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v n="$(nproc)" -v r="$result" \
        'BEGIN { printf "%.0f", b / t * n * 1e6 / r }')"
}

# p99 [read|write]: fio's completion-latency p99 of the last run_fio, ms.
p99() {
    jq -r --arg d "$1" '.jobs[0][$d].clat_ns.percentile["99.000000"] / 1e6 | . * 100 | round / 100' "$WORK/fio.json"
}
# p50 [read|write]: its median, ms.
p50() {
    jq -r --arg d "$1" '.jobs[0][$d].clat_ns.percentile["50.000000"] / 1e6 | . * 100 | round / 100' "$WORK/fio.json"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
