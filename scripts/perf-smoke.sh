#!/usr/bin/env bash
# Runs every strata-perf benchmark at its smallest size and checks that each prints its figures,
# so that no benchmark can rot (TigerBeetle's rule). Usage: bash scripts/perf-smoke.sh [strata-perf]
set -euo pipefail
cd "$(dirname "$0")/.."
perf="${1:-.build/debug/strata-perf}"
failures=0
# check NAME "TEXT1|TEXT2|…" ARGS… : exit 0 and every TEXT in the output
check() {
    local name="$1" wanted="$2"; shift 2
    if ! out="$("$perf" "$@" 2>&1)"; then echo "FAIL  $name: exit status"; echo "$out" | tail -5; failures=$((failures + 1)); return; fi
    local missing=""
    IFS='|' read -ra texts <<<"$wanted"
    for text in "${texts[@]}"; do grep -qF -- "$text" <<<"$out" || missing="$missing '$text'"; done
    if [ -n "$missing" ]; then echo "FAIL  $name: output lacks$missing"; failures=$((failures + 1)); else echo "ok    $name"; fi
}
check "io --smoke" "strata/fio" io --smoke
check "alloc --smoke" "1 MiB alloc+free|bytes per TiB" alloc --smoke
check "pool-import --smoke" "read-only, by paths|read-write, by paths" pool-import --smoke
check "recording-overhead --smoke" "ratio recorded/plain" recording-overhead --smoke
check "index --smoke" "inserts/s|lookups/s|keys/s|flush" index --smoke
check "dnode-cache --smoke" "lookups/s|bytes per cached dnode" dnode-cache --smoke
check "log --smoke" "records/s|commit p50|replay:" log --smoke
check "dmu --smoke" "new1m|overwrite4k|checkpoint after|replay:" dmu --smoke --dir /tmp
if [ "$failures" -ne 0 ]; then echo "perf-smoke: $failures failure(s)"; exit 1; fi
echo "perf-smoke: all benchmarks ran"
