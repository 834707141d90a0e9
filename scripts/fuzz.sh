#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/): every target for an hour each, or one target for a
# given number of seconds. It starts from the committed seeds (fuzz/corpus/<target>/, which
# cargo test replays); new inputs go to fuzz/work/<target>/ (not committed: fold the useful
# ones in with `cargo fuzz cmin`), crashes to fuzz/artifacts/<target>/.
#   scripts/fuzz.sh                  # all targets, 3600 s each
#   scripts/fuzz.sh policy_eval 600  # one target, 600 s
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools"
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$tools/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# cargo fuzz passes nightly-only flags (-Zsanitizer); the stable toolchain accepts them
# with RUSTC_BOOTSTRAP. Its own target directory keeps the sanitizer build apart.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${SLUICE_CACHE:-$HOME/.cache/sluice}/target-fuzz"
targets=("${1:-}")
seconds="${2:-3600}"
if [ -z "${targets[0]}" ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
mkdir -p fuzz/logs
failed=0
for t in "${targets[@]}"; do
    log="fuzz/logs/$t.log"
    echo "== $t: ${seconds}s (log: $log)"
    mkdir -p "fuzz/work/$t"
    if cargo fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    else
        echo "!! $t failed: see $log and fuzz/artifacts/$t/"
        failed=1
    fi
done
exit "$failed"
