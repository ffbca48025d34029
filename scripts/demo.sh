#!/usr/bin/env bash
# Sets up, builds (release) and runs the short demo: the Strata engine side by side with fio on
# a file in a temp dir, printing the table. Extra arguments go to `strata-perf io`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --product strata-perf
.build/release/strata-perf io --quick "$@"
