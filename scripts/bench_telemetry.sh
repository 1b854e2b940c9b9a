#!/usr/bin/env bash
# Usage: scripts/bench_telemetry.sh on|off > result.json — a fresh server, then the load generator
# (BENCHMARKS.md, "Issue 15"); run after `cargo build --release`, alternating on and off.
# on:  the default server: metrics recorded (--telemetry on), tracing spans at info with text logs.
# off: --telemetry off and RUST_LOG=warn (no histograms/per-job series, spans disabled).
set -euo pipefail
T=$1; F=${FLOTILLA:-target/release/flotilla}; D=${TMPDIR:-/tmp}/flotilla-bench-telemetry/$T-$$
rm -rf $D; mkdir -p $D
export FLOTILLA_ADMIN_TOKEN=benchtoken$$
$F dev-certs $D/certs >/dev/null
if [ "$T" = off ]; then export RUST_LOG=warn; else export RUST_LOG=info; fi
$F server --data-dir $D/server --listen 127.0.0.1:7171 --admin-listen 127.0.0.1:7544 \
   --tls-cert $D/certs/server.pem --tls-key $D/certs/server-key.pem --telemetry $T 2> $D/server.log >/dev/null &
SPID=$!
trap "kill $SPID 2>/dev/null || true" EXIT
unset RUST_LOG
ADMIN="--admin-url https://127.0.0.1:7544 --ca-cert $D/certs/ca.pem"
for i in $(seq 50); do $F job list $ADMIN >/dev/null 2>&1 && break; sleep 0.2; done
TOKEN=$($F enroll-token create $ADMIN --uses 1000 --expires 1h | tail -1)
$F bench coordinator --coordinator https://127.0.0.1:7171 $ADMIN --token $TOKEN \
   --clients 1000 --connections 2 --checkin-seconds 10 --checkin-concurrency 64 \
   --params 1000000 --upload-concurrency 8 --server-pid $SPID --json
