#!/usr/bin/env bash
# Sets up and runs every test: the unit and conformance suites, then the perf tool at its
# smallest size (so the benchmark cannot rot).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build --build-tests
swift test --skip-build 2>&1 | tee /tmp/strata-test.log
swift run strata-perf io --smoke
