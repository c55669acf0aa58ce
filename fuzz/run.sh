#!/usr/bin/env bash
# Run every fuzz target for a bounded time and print its executions and coverage.
#
#   fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]   (default 30 s, every target; `make fuzz`)
#
# Targets: load_file and build_and_project (cargo fuzz, fuzz/harness.rs) and readers
# (atheris on the Python data readers, fuzz/readers.py, run by $PYTHON with projroute
# and atheris installed).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Only a stable toolchain is assumed:
# cargo fuzz passes nightly-only -Z flags to rustc, which a stable rustc accepts with
# RUSTC_BOOTSTRAP=1; the address sanitizer runs on stable's shipped runtime that way.
# The corpus grows in fuzz/corpus/<target> (load_file is seeded from the model files of
# every kind in tests/fixtures and the index file in fuzz/seeds); a crash is saved under fuzz/artifacts/<target>/
# and fails the run: fix it, then keep the input in fuzz/regressions/<target>/, which
# `cargo test -p projroute --test fuzz_corpus` replays with the corpus.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
export RUSTC_BOOTSTRAP=1
targets=("${@:2}")
[ ${#targets[@]} -gt 0 ] || targets=(load_file build_and_project readers)
mkdir -p corpus/load_file corpus/build_and_project corpus/readers artifacts/readers logs
# Seeds, read but never written: new inputs go to the first folder, corpus/<target>.
declare -A seeds=([load_file]="seeds/load_file ../tests/fixtures/pre_issue9" [build_and_project]="seeds/build_and_project" [readers]="seeds/readers")
status=0
printf '%-20s %12s %8s %8s %8s %s\n' target executions exec/s cov features result
for t in "${targets[@]}"; do
    log=logs/$t.log
    set +e
    flags=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096)
    # shellcheck disable=SC2086
    if [ "$t" = readers ]; then
        "${PYTHON:-python3}" readers.py "${flags[@]}" -artifact_prefix=artifacts/readers/ "corpus/$t" ${seeds[$t]} >"$log" 2>&1
    else
        cargo fuzz run -O "$t" "corpus/$t" ${seeds[$t]} -- "${flags[@]}" >"$log" 2>&1
    fi
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    result=ok
    if [ "$rc" -ne 0 ]; then
        result="FAILED (see fuzz/$log and fuzz/artifacts/$t)"
        status=1
    fi
    printf '%-20s %12s %8s %8s %8s %s\n' "$t" "$execs" "$speed" "${cov:-?}" "${ft:-?}" "$result"
done
exit $status
