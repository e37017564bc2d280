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

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
