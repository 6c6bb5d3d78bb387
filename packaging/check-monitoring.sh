#!/usr/bin/env bash
# Checks the monitoring kit in packaging/monitoring/: the Prometheus alert rules parse
# (`promtool check rules`) and behave as their unit tests say (`promtool test rules`), and the
# Grafana dashboard is valid JSON whose every query names a metric. Whether those metric names
# are the ones the controller really exports is checked against a live controller by the
# integration test `monitoring::` (integration-tests/tests/it/monitoring.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh
rules=packaging/monitoring/prometheus
promtool check rules "$rules/certfleet.rules.yml"
(cd "$rules" && promtool test rules certfleet.rules.test.yml)
python3 - packaging/monitoring/grafana/certfleet.json <<'PY'
import json, re, sys
path = sys.argv[1]
with open(path) as f:
    dash = json.load(f)
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
if not exprs:
    sys.exit(f"{path}: no queries")
for e in exprs:
    if not re.search(r"\b(certfleet|x509)_[a-z_]+", e):
        sys.exit(f"{path}: query {e!r} names no certfleet or x509 metric")
print(f"{path}: {len(dash['panels'])} panels, {len(exprs)} queries")
PY
