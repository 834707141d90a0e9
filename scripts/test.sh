#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, Rust tests (unit, property,
# end-to-end on 127.0.0.1), then the official provider SDKs through a real `sluice dev`.
# Everything builds once, in the release profile, into CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Node 22, the MCP conformance suite and the Inspector CLI, for the MCP gateway's tests.
echo "== MCP test tools: $(bash scripts/mcp-tools.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export SLUICE_VENV="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"
export PATH="${SLUICE_TOOLS:-$HOME/.cache/sluice/bin}:$PATH" SLUICE_REQUIRE_PROMTOOL=1
# Tests must never reach a real provider, whatever the caller's environment says.
unset SLUICE_OPENAI_BASE_URL SLUICE_ANTHROPIC_BASE_URL SLUICE_GEMINI_BASE_URL

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== unsafe only where allowed (the workspace denies it; alloc/ allows it on its GlobalAlloc impl, proxy/src/cork.rs on one descriptor borrow, proxy/src/journal/segment.rs on one file mapping)"
if grep -rn --include='*.rs' 'allow(unsafe_code)' . --exclude-dir=target --exclude-dir=alloc --exclude-dir=.git \
  | grep -v -e '^\./proxy/src/cork\.rs:' -e '^\./proxy/src/journal/segment\.rs:'; then
  echo "unsafe_code allowed outside alloc/, proxy/src/cork.rs and proxy/src/journal/segment.rs: keep unsafe to those three" >&2
  exit 1
fi
for allowed in proxy/src/cork.rs proxy/src/journal/segment.rs; do
  if [ "$(grep -c 'allow(unsafe_code)' "$allowed")" != 1 ]; then
    echo "$allowed may allow unsafe_code once" >&2
    exit 1
  fi
done
echo "== cargo clippy"
cargo clippy --locked --release --workspace --all-targets -- -D warnings
echo "== cargo build (the sluice binary the SDK tests run, and the tests, with the same features)"
cargo build --locked --release --workspace --bins --tests
echo "== PostgreSQL (a throwaway cluster for the control plane's tests)"
read -r pg_dir pg_url < <(bash scripts/pg.sh start)
trap 'bash scripts/pg.sh stop "$pg_dir"' EXIT
export SLUICE_TEST_POSTGRES_URL="$pg_url" SLUICE_REQUIRE_POSTGRES=1
echo "== cargo test"
cargo test --locked --release --workspace
echo "== SDK and multi-process tests (openai, anthropic, google-genai, schemathesis; sluice dev, control plane + proxies)"
SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice" SLUICE_PYTHON="$SLUICE_VENV/bin/python" "$SLUICE_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sdk
