#!/usr/bin/env bash
# Builds certfleet-vcsim (integration-tests/vcsim/main.go: govmomi's vCenter simulator plus the
# CertificateManager and host calls it lacks) offline from Debian's govmomi source, into
# target/vcsim/. The binary is cached: it is rebuilt only when main.go is newer, so CI pays
# the Go build (about a minute of CPU) once per cache. Needs packaging/deps.sh's golang-go and
# golang-github-vmware-govmomi-dev. Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/integration-tests/vcsim/main.go"
target="${CARGO_TARGET_DIR:-$here/target}"
out="$target/vcsim/certfleet-vcsim"
mkdir -p "$target/vcsim"
# Tests start several simulators at once: one build at a time (the lock), each into its own
# temporary file, so a second caller waits and then finds the binary fresh.
exec 9>"$target/vcsim/.build.lock"
flock 9
if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
    tmp="$(mktemp "$out.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    (
        cd "$here/integration-tests/vcsim"
        GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE="$target/vcsim/go-cache" \
            go build -o "$tmp" .
    )
    chmod 0755 "$tmp"
    mv "$tmp" "$out"
    trap - EXIT
fi
echo "$out"
