#!/usr/bin/env bash
# Sets up, builds (release) and runs the demo on an embedded default: a 5-device pool on sparse
# files in a temp dir (created, shown, exported), then the Strata engine side by side with fio on
# a temp file, the allocator and pool-import benchmarks, the object store benchmark (strata-perf
# dmu, small) and a `strata pool check` of the demo pool. Extra arguments go to
# `strata-perf io`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --product strata
swift build -c release --product strata-perf
dir="$(mktemp -d /tmp/strata-demo.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
echo "== a pool on files in $dir"
.build/release/strata pool create demo --data "$dir/data0:2G" --data "$dir/data1:2G" \
    --metadata "$dir/meta0:512M" --log "$dir/log0:256M" --spill "$dir/spill0:8G" \
    --copies metadata=2 --set small-block-cutoff=64K > /dev/null
.build/release/strata pool export --dir "$dir" > /dev/null
.build/release/strata pool status --dir "$dir"
echo
echo "== block I/O: fio and Strata on the same file"
.build/release/strata-perf io --quick "$@"
echo
echo "== allocator at 90% fill"
.build/release/strata-perf alloc --size 256G --operations 100000
echo
echo "== pool import"
.build/release/strata-perf pool-import --repeats 10
echo
echo "== the object store: durable transactions (1 MiB new objects, 4 KiB overwrites) vs fio, a checkpoint, replay"
.build/release/strata-perf dmu --dir /tmp --size 8G --seconds 1 --rounds 1 --replay-bytes 128M
echo
echo "== strata pool check of the demo pool"
.build/release/strata pool check --dir "$dir"
