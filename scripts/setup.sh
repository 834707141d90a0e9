#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian machine:
# cmake (pingora-core builds zlib-ng with it), PostgreSQL's server binaries (the control
# plane's tests start a throwaway cluster), Go with the template libraries Helm uses (the
# chart's test renders it), and a Python virtualenv holding the official
# provider SDKs and schemathesis that the end-to-end tests use. (The official MCP test
# tools come from scripts/mcp-tools.sh, which the test suite runs.)
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SLUICE_VENV:-$HOME/.cache/sluice/venv}"

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
# The control plane's tests run against a throwaway PostgreSQL cluster (scripts/pg.sh).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The Helm chart's test renders it with Go's text/template, sprig and gojsonschema, the
# libraries Helm is built on (scripts/helm_render.sh); Helm itself is not packaged here.
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
gocode=/usr/share/gocode/src/github.com
[ -d "$gocode/Masterminds/sprig" ] || need_apt+=(golang-github-masterminds-sprig-dev)
[ -d "$gocode/xeipuuv/gojsonschema" ] || need_apt+=(golang-github-xeipuuv-gojsonschema-dev)
[ -d /usr/share/gocode/src/gopkg.in/yaml.v3 ] || need_apt+=(golang-gopkg-yaml.v3-dev)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]} (needs root)" >&2
    exit 1
  fi
fi

# promtool (Debian's prometheus package) checks the /metrics output in the tests. Only the
# binary is taken from the package: installing it would start a Prometheus server.
bin_dir="${SLUICE_TOOLS:-$HOME/.cache/sluice/bin}"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$bin_dir/promtool" ]; then
  mkdir -p "$bin_dir"
  tmp="$(mktemp -d)"
  ( cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb x ) \
    || { [ "$(id -u)" = 0 ] && apt-get update -qq && ( cd "$tmp" && apt-get download -qq prometheus >/dev/null && dpkg-deb -x prometheus_*.deb x ); }
  cp "$tmp/x/usr/bin/promtool" "$bin_dir/promtool"
  rm -rf "$tmp"
fi

req="$here/scripts/requirements-test.txt"
stamp="$venv/.sluice-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
echo "setup: ok (cmake $(cmake --version | head -1 | awk '{print $3}'), promtool in $bin_dir, venv $venv)"
