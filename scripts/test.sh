#!/usr/bin/env bash
# Sets up and runs every test: the unit, conformance and crash suites, then the perf tool at its
# smallest size (so the benchmarks cannot rot), then the `strata pool` command-line checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build --build-tests
log="$(mktemp)"
swift test --skip-build 2>&1 | tee "$log"
# The hot paths again in an optimized build (what ships): allocation counts there are the contract.
swift build -c release -Xswiftc -enable-testing --build-tests --scratch-path .build-release-tests
swift test -c release -Xswiftc -enable-testing --skip-build --scratch-path .build-release-tests \
    --filter "HotPath|Hot path allocations" 2>&1 | tee "$log.release"
hot="$(grep -Eo 'Test run with [0-9]+ tests in [0-9]+ suites passed' "$log.release" | grep -Eo '[0-9]+' | head -1 || true)"
if [ -z "$hot" ] || [ "$hot" -lt 4 ]; then echo "release hot-path run: expected at least 4 passing tests (I/O engine, allocator, dnode cache, transaction)"; exit 1; fi
rm -f "$log.release"
swift build --product strata-perf
bash scripts/perf-smoke.sh .build/debug/strata-perf
bash scripts/cli-smoke.sh .build/debug/strata
# A plain summary line for tools that read the last line of a run.
count="$(grep -Eo 'Test run with [0-9]+ tests' "$log" | tail -1 | grep -Eo '[0-9]+' || true)"
rm -f "$log"
if [ -z "$count" ] || [ "$count" -eq 0 ]; then echo "tests: no test ran"; exit 1; fi
echo "tests: $count passed, 0 failed"
