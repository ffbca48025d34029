#!/usr/bin/env bash
# Exercises the `strata pool` commands end to end on sparse files in a temp dir, including the
# bad inputs the pool issue names; every check states what it expects. Usage:
#   bash scripts/cli-smoke.sh [path/to/strata]        (default: .build/debug/strata)
set -euo pipefail
cd "$(dirname "$0")/.."
strata="${1:-.build/debug/strata}"
dir="$(mktemp -d /tmp/strata-cli.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
failures=0
pass() { echo "ok    $1"; }
fail() { echo "FAIL  $1"; failures=$((failures + 1)); }

# expect_ok NAME CMD... : exit 0
expect_ok() { local name="$1"; shift; if out="$("$@" 2>&1)"; then pass "$name"; else fail "$name: $out"; fi; }
# expect_error NAME TEXT CMD... : non-zero exit and stderr mentioning TEXT
expect_error() {
    local name="$1" text="$2"; shift 2
    if out="$("$@" 2>&1)"; then fail "$name: succeeded"; return; fi
    if grep -qF -- "$text" <<<"$out"; then pass "$name"; else fail "$name: message lacks '$text': $out"; fi
}

expect_ok "create a 4-device pool" "$strata" pool create tank --data "$dir/d0:256M" --data "$dir/d1:256M" \
    --metadata "$dir/m0:128M" --log "$dir/l0:64M" --copies metadata=2 --set small-block-cutoff=64K
expect_ok "status by directory" "$strata" pool status --dir "$dir"
"$strata" pool status --dir "$dir" --json > "$dir/status.json"
if python3 -c "import json,sys; s=json.load(open(sys.argv[1])); assert s['name']=='tank' and len(s['devices'])==4 and s['policy']['copies.metadata']=='2'" "$dir/status.json"; then
    pass "status --json names the pool, 4 devices, copies.metadata=2"
else
    fail "status --json content"
fi
expect_ok "export" "$strata" pool export "$dir/d0" "$dir/d1" "$dir/m0" "$dir/l0"
expect_ok "set spill-threshold" "$strata" pool set spill-threshold=70 --dir "$dir"
if "$strata" pool status --dir "$dir" --json | grep -q '"spill-threshold" : "70"'; then pass "setting persisted"; else fail "setting persisted"; fi
if "$strata" pool status --dir "$dir" --json | grep -q '"wasExported" : true'; then pass "set keeps an exported pool exported"; else fail "set keeps exported"; fi
expect_ok "import read-write" "$strata" pool import --dir "$dir"
expect_ok "check a pool without objects" "$strata" pool check --dir "$dir"
if out="$("$strata" pool check --json --dir "$dir" 2>&1)" && echo "$out" | grep -q '"problems" : \[' ; then pass "check --json"; else fail "check --json: $out"; fi

before="$(cksum "$dir"/d0 "$dir"/d1 "$dir"/m0 "$dir"/l0)"
expect_error "unknown setting" "unknown setting 'colour'" "$strata" pool set colour=blue --dir "$dir"
expect_error "bad setting value" "copies.data=9" "$strata" pool set copies.data=9 --dir "$dir"
expect_error "copies beyond devices" "copies.data=3 needs 3" "$strata" pool set copies.data=3 --dir "$dir"
expect_error "device already labelled" "already carries a Strata label" "$strata" pool create other --data "$dir/d0"
expect_error "device listed twice" "listed twice" "$strata" pool create other --data "$dir/x0:128M" --log "$dir/x0:128M"
expect_error "device too small" "$dir/tiny" "$strata" pool create other --data "$dir/tiny:8M"
expect_error "no data device" "at least one data device" "$strata" pool create other --metadata "$dir/y0:128M"
expect_error "unknown role in --copies" "unknown role 'special'" "$strata" pool create other --data "$dir/z0:128M" --copies special=2
expect_error "missing member" "missing 1 device" "$strata" pool import "$dir/d0" "$dir/d1" "$dir/m0"
expect_error "missing file without size" "give PATH:SIZE" "$strata" pool create other --data "$dir/nosuch"
after="$(cksum "$dir"/d0 "$dir"/d1 "$dir"/m0 "$dir"/l0)"
if [ "$before" = "$after" ]; then pass "refused commands left the devices unchanged"; else fail "devices changed by refused commands"; fi
for f in x0 tiny y0 z0 nosuch; do
    if [ -e "$dir/$f" ]; then fail "refused create left $f behind"; fi
done

expect_ok "one-device pool" "$strata" pool create solo --data "$dir/s0:64M"
expect_error "foreign device" "belongs to pool 'solo'" "$strata" pool import --name tank "$dir/d0" "$dir/d1" "$dir/m0" "$dir/l0" "$dir/s0"

# A mounted block device is refused even with --force (root only: loop devices and mount).
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null; then
    truncate -s 64M "$dir/fs.img" && mkfs.ext4 -q -F "$dir/fs.img"
    if loop="$(losetup -f --show "$dir/fs.img" 2>/dev/null)"; then
        mkdir -p "$dir/mnt"
        if mount "$loop" "$dir/mnt" 2>/dev/null; then
            expect_error "mounted block device" "busy: mounted at" "$strata" pool create blk --data "$loop" --force
            umount "$dir/mnt"
        else
            echo "skip  mounted block device (mount failed)"
        fi
        # The same device, unmounted, makes a pool.
        expect_ok "pool on a block device" "$strata" pool create blk --data "$loop" --force
        losetup -d "$loop"
    else
        echo "skip  block device checks (no loop device)"
    fi
else
    echo "skip  block device checks (not root, or no losetup/mkfs.ext4)"
fi

if [ "$failures" -ne 0 ]; then echo "cli-smoke: $failures failure(s)"; exit 1; fi
echo "cli-smoke: all checks passed"
