#!/usr/bin/env bash
# Fails when a binary needs a glibc newer than the oldest host certfleet runs on.
#
#   packaging/check-glibc.sh [--max 2.28] BINARY...
#
# The hosts: VCSA 7 (Photon OS 3) and oVirt 4.4/4.5 on EL8 have glibc 2.28, Ubuntu 20.04 admin
# workstations 2.31. Reads the versioned symbols with `objdump -T` (the highest GLIBC_x.y a
# binary asks for is the oldest glibc it starts on) and the shared libraries with `objdump -p`:
# only glibc's own libraries and libgcc_s may be needed (no libssl, libcrypto, libpython ...).
set -euo pipefail
max=2.28
if [ "${1:-}" = "--max" ]; then
    max="$2"
    shift 2
fi
[ $# -gt 0 ] || { echo "usage: $0 [--max 2.28] BINARY..." >&2; exit 2; }
command -v objdump >/dev/null || { echo "check-glibc: objdump not found (apt-get install binutils)" >&2; exit 2; }

allowed_libs='^(libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
failed=0
for bin in "$@"; do
    [ -f "$bin" ] || { echo "check-glibc: $bin: no such file" >&2; failed=1; continue; }
    syms="$(objdump -T "$bin" 2>&1)" || { echo "check-glibc: objdump -T $bin: $syms" >&2; failed=1; continue; }
    need="$(grep -o 'GLIBC_[0-9][0-9.]*' <<<"$syms" | sed 's/GLIBC_//' | sort -uV | tail -1)"
    need="${need:-none}"
    if [ "$need" != none ] && [ "$(printf '%s\n%s\n' "$need" "$max" | sort -V | tail -1)" != "$max" ]; then
        echo "FAIL $bin needs GLIBC_$need (> $max); symbols:" >&2
        grep -E "GLIBC_$need\b" <<<"$syms" | awk '{ print "    " $NF }' | head -5 >&2 || true
        failed=1
        continue
    fi
    libs="$(objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }')"
    bad="$(grep -Ev "$allowed_libs" <<<"$libs" || true)"
    if [ -n "$bad" ]; then
        echo "FAIL $bin needs libraries the hosts may lack: $(echo $bad)" >&2
        failed=1
        continue
    fi
    echo "ok   $bin: highest GLIBC_$need (<= $max), needs $(echo $libs)"
done
exit "$failed"
