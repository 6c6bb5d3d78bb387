#!/usr/bin/env bash
# Checks systemd units against what systemd 239 (EL8, Photon OS 3) understands, and optionally
# with `systemd-analyze verify`.
#
#   packaging/check-units.sh [--verify] UNIT...
#
# Every `Key=` line of [Unit], [Service] and [Install] must be a directive systemd 239 knows
# (packaging/systemd/systemd-239-directives.txt, read off systemd's v239 source), and the values
# of Type=, KillMode= and SystemCallFilter= groups must be ones 239 knows: a newer directive is
# only a warning on 239 and the protection silently goes missing, a newer Type= fails the unit.
# --verify also runs `systemd-analyze verify` (needs the ExecStart binaries installed, so
# packaging/test-packages.sh uses it on the installed units). Exits 1 on any problem, naming
# the unit, line and directive.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
known="$here/systemd/systemd-239-directives.txt"

verify=0
if [ "${1:-}" = "--verify" ]; then
    verify=1
    shift
fi
[ $# -gt 0 ] || { echo "usage: $0 [--verify] UNIT..." >&2; exit 2; }

problems=0
for unit in "$@"; do
    [ -f "$unit" ] || { echo "$unit: no such unit file" >&2; problems=$((problems + 1)); continue; }
    section=""
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        case "$line" in
            '' | '#'* | ';'*) continue ;;
            '['*']') section="${line#[}"; section="${section%]}"; continue ;;
        esac
        key="${line%%=*}"
        value="${line#*=}"
        if [ "$key" = "$line" ]; then
            echo "$unit:$n: not a Key=Value line: $line" >&2
            problems=$((problems + 1))
            continue
        fi
        if ! grep -qxF "$section.$key" "$known"; then
            echo "$unit:$n: [$section] $key= is not known to systemd 239" >&2
            problems=$((problems + 1))
            continue
        fi
        case "$key" in
            Type | KillMode)
                if ! grep -qxF "value:$key=$value" "$known"; then
                    echo "$unit:$n: $key=$value is not known to systemd 239" >&2
                    problems=$((problems + 1))
                fi
                ;;
            SystemCallFilter)
                for word in ${value#\~}; do
                    case "$word" in
                        @*) grep -qxF "value:SystemCallFilter=$word" "$known" || {
                            echo "$unit:$n: system call group $word is not known to systemd 239" >&2
                            problems=$((problems + 1))
                        } ;;
                    esac
                done
                ;;
        esac
    done <"$unit"
    if [ "$verify" = 1 ]; then
        # verify prints warnings for any problem (unknown directive, missing binary, bad value)
        # and exits 0 for some of them: treat any output as a failure.
        out="$(systemd-analyze verify "$unit" 2>&1)" || { echo "$out" >&2; problems=$((problems + 1)); continue; }
        if [ -n "$out" ]; then
            echo "$unit: systemd-analyze verify:" >&2
            echo "$out" >&2
            problems=$((problems + 1))
        fi
    fi
done

if [ "$problems" -gt 0 ]; then
    echo "check-units: $problems problem(s)" >&2
    exit 1
fi
echo "check-units: $# unit(s) use only systemd 239 directives$([ "$verify" = 1 ] && echo ", systemd-analyze verify clean")"
