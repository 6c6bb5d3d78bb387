#!/usr/bin/env bash
# A local demo fleet on loopback: a controller (state in its embedded sled store) and one agent
# per simulated host (VCSA, oVirt engine and hosts, GKE admin workstation, a CA and a web host),
# enrolled with join tokens; the fleet's expiring certificates; a rotation with a dry run, a
# live watch and a before/after table.
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

step "building the simulated fleet (VCSA, oVirt engine + 3 hosts, GKE admin workstation, CA + web host)"
"$bin/certfleet-sim" demo-fleet --dir "$work/hosts" > "$work/fleet.txt"
cat "$work/fleet.txt"

n=0
while read -r name root config services; do
    if [ -n "${services:-}" ]; then
        "$bin/certfleet-sim" --root "$root" "$services" >"$work/$name-services.log" 2>&1 &
        pids+=($!)
    fi
    token=$("$bin/certfleet" token create --ttl 10m --label "demo=yes")
    "$bin/certfleet-agent" enroll --controller "$CERTFLEET_CONTROLLER" --token "$token" \
        --state-dir "$work/agents/$name" --name "$name" >/dev/null
    NO_COLOR=1 "$bin/certfleet-agent" run --state-dir "$work/agents/$name" --config "$config" \
        >"$work/agent-$name.log" 2>&1 &
    pids+=($!)
    n=$((n + 1))
done < "$work/fleet.txt"
echo "enrolled $n agents with single-use join tokens"

step "waiting for $n agents to connect and report inventory"
for _ in $(seq 150); do
    c=$("$bin/certfleet" agents list -o json | grep -c '"connected": true' || true)
    [ "$c" = "$n" ] && break
    sleep 0.2
done
sleep 3

step "certfleet agents list"
"$bin/certfleet" agents list

step "certfleet inventory --expiring-within 90d   (the fleet's problems, most urgent first)"
"$bin/certfleet" inventory --expiring-within 90d

"$bin/certfleet" inventory -o json > "$work/inventory-before.json"

step "rotation, dry run first: certfleet plan create ovirt-hosts-offline --expiring-within 30d --dry-run"
"$bin/certfleet" plan create ovirt-hosts-offline --expiring-within 30d --dry-run

# The whole fleet, one recipe per platform, each plan followed live. A recipe with nothing in
# scope says so and the demo goes on.
for recipe in files ovirt-hosts-offline vsphere-sts vsphere-machine-ssl vsphere-solution-users gke-user-ca; do
    step "rotation: certfleet plan create $recipe --expiring-within 30d --run; certfleet plan watch"
    # "Nothing to renew" exits 0 with the reasons on stderr and nothing on stdout.
    if out=$("$bin/certfleet" plan create "$recipe" --expiring-within 30d --run -o json); then
        plan=$(printf '%s\n' "$out" | sed -n 's/^  "id": "\(.*\)",$/\1/p')
        if [ -n "$plan" ]; then
            "$bin/certfleet" plan watch "$plan" | grep -v '^    ' || echo "plan $plan did not succeed"
        fi
    fi
done

step "rescan, then: certfleet inventory --compare inventory-before.json   (before / after)"
"$bin/certfleet" inventory rescan >/dev/null 2>&1 || true
sleep 5
"$bin/certfleet" inventory --compare "$work/inventory-before.json"

step "what is still expiring within 30 days"
"$bin/certfleet" inventory --expiring-within 30d

step "the controller at a glance: certfleet status"
"$bin/certfleet" status

echo
echo "work dir: $work (logs, controller data, agent state)"
if [ $keep = 1 ]; then
    echo "still running: kill ${pids[*]}"
    echo "try: CERTFLEET_CONTROLLER=$CERTFLEET_CONTROLLER CERTFLEET_IDENTITY=$CERTFLEET_IDENTITY $bin/certfleet agents list"
fi
