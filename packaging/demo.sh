#!/usr/bin/env bash
# A local demo fleet on loopback: a controller (state in its embedded sled store) and one agent
# per host, enrolled with join tokens, listed by the operator CLI.
#
#   ./packaging/demo.sh           run, print, stop everything (the work dir is kept)
#   ./packaging/demo.sh --keep    leave controller and agents running; prints how to stop them
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh

keep=0
[ "${1:-}" = "--keep" ] && keep=1

cargo build --workspace --bins --locked -q
bin="$PWD/target/debug"
work="${CERTFLEET_DEMO_DIR:-$(mktemp -d /tmp/certfleet-demo.XXXXXX)}"
mkdir -p "$work"
pids=()
cleanup() {
    [ $keep = 1 ] && return
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port() { python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])
PY
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export CERTFLEET_CONTROLLER="127.0.0.1:$(port)"
export CERTFLEET_IDENTITY="$work/controller/admin"
http="127.0.0.1:$(port)"

step "certfleet init (fleet CA, controller certificate, first admin)"
"$bin/certfleet" init --data-dir "$work/controller"

step "certfleet serve on $CERTFLEET_CONTROLLER (metrics on http://$http/metrics)"
NO_COLOR=1 "$bin/certfleet" serve --data-dir "$work/controller" --listen "$CERTFLEET_CONTROLLER" --http "$http" \
    >"$work/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do "$bin/certfleet" agents list >/dev/null 2>&1 && break; sleep 0.2; done

hosts=(vcsa-01 ovirt-engine-01 gke-admin-01)
for h in "${hosts[@]}"; do
    step "enroll $h with a single-use join token"
    token=$("$bin/certfleet" token create --ttl 10m --label "demo=yes")
    "$bin/certfleet-agent" enroll --controller "$CERTFLEET_CONTROLLER" --token "$token" \
        --state-dir "$work/agents/$h" --name "$h"
    NO_COLOR=1 "$bin/certfleet-agent" run --state-dir "$work/agents/$h" >"$work/agent-$h.log" 2>&1 &
    pids+=($!)
done

step "waiting for ${#hosts[@]} agents to connect"
for _ in $(seq 100); do
    n=$("$bin/certfleet" agents list -o json | grep -c '"connected": true' || true)
    [ "$n" = "${#hosts[@]}" ] && break
    sleep 0.2
done

step "certfleet agents list"
"$bin/certfleet" agents list
step "certfleet token list"
"$bin/certfleet" token list
step "certfleet audit"
"$bin/certfleet" audit

echo
echo "work dir: $work (logs, controller data, agent state)"
if [ $keep = 1 ]; then
    echo "still running: kill ${pids[*]}"
    echo "try: CERTFLEET_CONTROLLER=$CERTFLEET_CONTROLLER CERTFLEET_IDENTITY=$CERTFLEET_IDENTITY $bin/certfleet agents list"
fi
