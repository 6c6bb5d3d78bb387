#!/usr/bin/env bash
# Builds what an operator installs: release binaries of certfleet-agent and certfleet that run on
# glibc 2.28 (VCSA 7 / Photon OS 3, EL8 oVirt engines and hosts, and everything newer), .deb and
# .rpm packages of both, and SHA256SUMS.
#
#   packaging/build-packages.sh            -> target/packages/
#
# Environment: CERTFLEET_PKG_OUT (output directory), CERTFLEET_PKG_RELEASE (package release,
# default 1; the upgrade test builds a 2), CERTFLEET_PKG_SKIP_BUILD=1 (package the binaries
# already built in target/x86_64-unknown-linux-gnu/, used for that second build).
#
# The agent is built with the `agent` profile (size-optimised, fat LTO: see Cargo.toml), the
# controller with `release`.
#
# Why zigbuild and not musl: the musl target's std cannot be installed here (rustup reaches no
# download server), while `cargo zigbuild --target x86_64-unknown-linux-gnu.2.28` links against
# glibc 2.28's symbol versions with Zig's linker and the std we have. aarch64 has the same
# problem (no aarch64 std available), so only x86_64 is built.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$(pwd)"
source packaging/pkgtools.sh

triple=x86_64-unknown-linux-gnu
glibc=2.28
out="${CERTFLEET_PKG_OUT:-$src/target/packages}"
release="${CERTFLEET_PKG_RELEASE:-1}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "build-packages: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
agent_bin="$src/target/$triple/agent/certfleet-agent"
controller_bin="$src/target/$triple/release/certfleet"

if [ "${CERTFLEET_PKG_SKIP_BUILD:-0}" != 1 ]; then
    start=$SECONDS
    cargo zigbuild --profile agent --locked --target "$triple.$glibc" \
        -p certfleet-agent --bin certfleet-agent
    echo "build-packages: agent build (profile agent) took $((SECONDS - start)) s" >&2
    start=$SECONDS
    cargo zigbuild --release --locked --target "$triple.$glibc" \
        -p certfleet-controller --bin certfleet
    echo "build-packages: controller build (release) took $((SECONDS - start)) s" >&2
fi
packaging/check-glibc.sh --max "$glibc" "$agent_bin" "$controller_bin"

stage="$src/target/packages-stage"
rm -rf "$stage"
mkdir -p "$stage/completions" "$stage/man/agent" "$stage/man/controller" "$out"
install -m 0755 "$agent_bin" "$controller_bin" "$stage/"

# Completions and man pages come from the binaries themselves (clap), so they match the flags.
for shell in bash zsh fish; do
    "$stage/certfleet-agent" completion "$shell" >"$stage/completions/certfleet-agent.$shell"
    "$stage/certfleet" completion "$shell" >"$stage/completions/certfleet.$shell"
done
mv "$stage/completions/certfleet-agent.zsh" "$stage/completions/_certfleet-agent"
mv "$stage/completions/certfleet.zsh" "$stage/completions/_certfleet"
"$stage/certfleet-agent" man --out-dir "$stage/man/agent" >/dev/null
"$stage/certfleet" man --out-dir "$stage/man/controller" >/dev/null
gzip -9n "$stage"/man/*/*.1

# Maintainer scripts: one template per phase, filled in per package.
fill() { # PACKAGE UNIT STATE_DIR OWNER
    local dir="$stage/scripts/${1#certfleet-}"
    mkdir -p "$dir"
    for phase in postinst prerm postrm; do
        sed -e "s|@PACKAGE@|$1|g" -e "s|@UNIT@|$2|g" -e "s|@STATE_DIR@|$3|g" -e "s|@OWNER@|$4|g" \
            "packaging/scripts/$phase.in" >"$dir/$phase"
        chmod 0755 "$dir/$phase"
    done
}
fill certfleet-agent certfleet-agent.service /var/lib/certfleet-agent root
fill certfleet-controller certfleet-controller.service /var/lib/certfleet certfleet

rm -rf "$out" && mkdir -p "$out"
for pkg in agent controller; do
    # nfpm expands variables in a few fields only: fill in the recipe's ${CERTFLEET_*} here.
    sed -e "s|\${CERTFLEET_SRC}|$src|g" -e "s|\${CERTFLEET_STAGE}|$stage|g" \
        -e "s|\${CERTFLEET_VERSION}|$version|g" -e "s|\${CERTFLEET_RELEASE}|$release|g" \
        -e "s|\${CERTFLEET_ARCH}|amd64|g" "packaging/nfpm/$pkg.yaml" >"$stage/nfpm-$pkg.yaml"
    if grep -n 'CERTFLEET_' "$stage/nfpm-$pkg.yaml" | grep -v '^[0-9]*:#'; then
        echo "build-packages: unfilled variable in packaging/nfpm/$pkg.yaml" >&2
        exit 1
    fi
    for format in deb rpm; do
        nfpm package --config "$stage/nfpm-$pkg.yaml" --packager "$format" --target "$out/" >&2
    done
done
# The bare binaries too: VCSA has no supported package manager for third-party software.
install -m 0755 "$agent_bin" "$out/certfleet-agent-$version-linux-x86_64"
install -m 0755 "$controller_bin" "$out/certfleet-$version-linux-x86_64"
(cd "$out" && sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS && sha256sum --quiet -c SHA256SUMS)

echo "build-packages: $out"
(cd "$out" && ls -l -- *)
echo "agent binary (profile agent, stripped): $(stat -c %s "$agent_bin") bytes"
