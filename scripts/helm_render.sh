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
# Rebuilt when the source's content changes (not its time: a fresh clone is newer than any
# cached build). Tests render in parallel, so each build goes to its own file and is renamed
# into place in one step.
want="$(sha256sum "$src" | cut -d' ' -f1)"
if [ ! -x "$bin" ] || [ "$(cat "$bin.sha256" 2>/dev/null)" != "$want" ]; then
    command -v go >/dev/null || { echo "helm_render: go is missing; run scripts/setup.sh" >&2; exit 1; }
    mkdir -p "$bin_dir"
    tmp="$(mktemp -d)"
    out="$(mktemp "$bin_dir/helm-render.XXXXXX")"
    cp "$src" "$tmp/main.go"
    # GOPATH mode over Debian's Go library packages: no module download.
    ( cd "$tmp" && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$tmp/cache" go build -o "$out" . )
    mv -f "$out" "$bin"
    echo "$want" > "$bin.sha256.$$" && mv -f "$bin.sha256.$$" "$bin.sha256"
    rm -rf "$tmp"
fi
cd "$root"
exec "$bin" "$@"
