# The runner of the VM suites, sourced by e2e.sh and cluster-e2e.sh:
# run_tests SUITE ON_FAILURE TEST... runs each test function in this shell,
# so that a daemon one test starts stays a child that a later test can stop
# and wait for; ON_FAILURE (a function) shows what helps after a failure.
# A failing command returns from the test function: an ERR trap stands in
# for -e, which functions called in a condition would ignore. Prints
# "SUITE: N passed, M failed" and returns non-zero if any failed.

run_tests() {
    local suite=$1 on_failure=$2 t start rc passed=0 failed=0
    shift 2
    set -E
    for t in "$@"; do
        start=$SECONDS
        # Returns from the test (or its helper), not from run_tests.
        trap '[ -n "${FUNCNAME[0]:-}" ] && [ "${FUNCNAME[0]}" != run_tests ] && return 1' ERR
        "$t" > >(sed 's/^/    /') 2>&1
        rc=$?
        trap - ERR
        sleep 0.1 # let the indenting sed drain before the verdict line
        if [ "$rc" -eq 0 ]; then
            passed=$((passed + 1)); echo "ok   $t ($((SECONDS - start)) s)"
        else
            failed=$((failed + 1)); echo "FAIL $t ($((SECONDS - start)) s)"
            "$on_failure"
        fi
    done
    echo "$suite: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
