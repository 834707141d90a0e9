#!/usr/bin/env bash
# Renders helm/sluice like `helm template` (Helm cannot be installed here): builds
# scripts/helm-render (Go text/template + sprig + gojsonschema, from Debian's packages, which
# scripts/setup.sh installs) into the cache once, then runs it with the given arguments.
#   scripts/helm_render.sh -chart helm/sluice -f my-values.yaml
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools"
bin="$bin_dir/helm-render"
src="$root/scripts/helm-render/main.go"
if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    command -v go >/dev/null || { echo "helm_render: go is missing; run scripts/setup.sh" >&2; exit 1; }
    mkdir -p "$bin_dir"
    tmp="$(mktemp -d)"
    cp "$src" "$tmp/main.go"
    # GOPATH mode over Debian's Go library packages: no module download.
    ( cd "$tmp" && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$tmp/cache" go build -o "$bin.tmp" . )
    mv "$bin.tmp" "$bin"
    rm -rf "$tmp"
fi
cd "$root"
exec "$bin" "$@"
