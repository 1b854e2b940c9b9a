#!/usr/bin/env bash
# A complete federation on this machine, over TLS on loopback: a coordinator, N client processes
# each training on its share of the digits data set, one job (examples/job-digits.toml) run to the
# end, then the trained model downloaded. Everything this script starts is stopped when it exits,
# also on Ctrl-C. Run it from the repository root after `cargo build --release`.
#
# Settings (environment variables, with their defaults):
#   FLOTILLA=target/release/flotilla   the binary
#   FLOTILLA_DIR=fl                    work directory: certificates, state, logs (wiped at start!)
#   FLOTILLA_LISTEN=127.0.0.1:7070     gRPC address for the clients
#   FLOTILLA_ADMIN_LISTEN=127.0.0.1:7443  admin API address
#   FLOTILLA_CLIENTS=10                how many clients to start (the job waits for its min_clients)
#   FLOTILLA_JOB=examples/job-digits.toml  the job to run
#   FLOTILLA_ADMIN_TOKEN               admin API token (a random one if unset)
#   FLOTILLA_PYTHON_CLIENTS=0          how many of the clients are Python (numpy) clients,
#                                      examples/python/numpy_logreg_client.py (the last ones)
#   FLOTILLA_PYTHON=python3            the Python that has the flotilla package installed
#   FLOTILLA_OPERATE=0                 1: also what an operator sees: the coordinator's Prometheus
#                                      metrics on FLOTILLA_METRICS_LISTEN, a real Prometheus (if
#                                      installed) scraping them with deploy/prometheus/alerts.yml,
#                                      the probes, and the web console's address
#   FLOTILLA_METRICS_LISTEN=127.0.0.1:9464     plain-HTTP metrics listener (FLOTILLA_OPERATE=1)
#   FLOTILLA_PROMETHEUS_LISTEN=127.0.0.1:9090  Prometheus's web address (FLOTILLA_OPERATE=1)
#   FLOTILLA_HOLD=0                    1: keep everything running after the job until Ctrl-C, to
#                                      look at the console, the metrics and Prometheus
#   FLOTILLA_GOVERN=0                  1: also governance: the coordinator signs its audit log;
#                                      principals alice (scientist), bob (approver) and carol
#                                      (auditor); the tenant needs approval and the Cedar policy
#                                      examples/policies/job-limits.cedar is applied; alice submits, her own
#                                      approval is refused, bob approves; carol verifies the audit
#                                      log and writes the job's evidence pack to $FLOTILLA_DIR/evidence
#   FLOTILLA_SHIP=0                    1: also the model lifecycle: clients announce a cohort
#                                      (region=eu or region=us); the trained model is registered
#                                      as digits@1, evaluated by the clients per cohort, gated and
#                                      promoted to production; the job's round-1 model, registered
#                                      as digits@2, is refused by the gate; digits@1 is exported
#                                      and pulled by a client as it would for inference
set -euo pipefail

F=${FLOTILLA:-target/release/flotilla}
DIR=${FLOTILLA_DIR:-fl}
LISTEN=${FLOTILLA_LISTEN:-127.0.0.1:7070}
ADMIN_LISTEN=${FLOTILLA_ADMIN_LISTEN:-127.0.0.1:7443}
CLIENTS=${FLOTILLA_CLIENTS:-10}
JOB_SPEC=${FLOTILLA_JOB:-examples/job-digits.toml}
PY_CLIENTS=${FLOTILLA_PYTHON_CLIENTS:-0}
PY=${FLOTILLA_PYTHON:-python3}
OPERATE=${FLOTILLA_OPERATE:-0}
METRICS_LISTEN=${FLOTILLA_METRICS_LISTEN:-127.0.0.1:9464}
PROM_LISTEN=${FLOTILLA_PROMETHEUS_LISTEN:-127.0.0.1:9090}
HOLD=${FLOTILLA_HOLD:-0}
GOVERN=${FLOTILLA_GOVERN:-0}
SHIP=${FLOTILLA_SHIP:-0}
export FLOTILLA_ADMIN_TOKEN=${FLOTILLA_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}

command -v "$F" >/dev/null || { echo "error: no flotilla binary at $F: run \`cargo build --release\`, or set FLOTILLA" >&2; exit 1; }
if [ "$PY_CLIENTS" -gt 0 ] && ! "$PY" -c 'import flotilla' 2>/dev/null; then
  echo "error: $PY cannot import flotilla: install it with \`$PY -m pip install ./crates/flotilla-py\`, or set FLOTILLA_PYTHON" >&2
  exit 1
fi

# Every process started here, and its log, so that all of them are stopped (by PID) on exit.
PIDS=()
LOGS=()
WAITER=   # the `job wait` running in the background, if any
stop() {
  trap - EXIT INT TERM
  if [ -n "$WAITER" ]; then kill -TERM "$WAITER" 2>/dev/null || true; wait "$WAITER" 2>/dev/null || true; fi
  if [ ${#PIDS[@]} -gt 0 ]; then
    echo "stopping ${#PIDS[@]} processes"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true   # flotilla server and client shut down on SIGTERM
    for _ in $(seq 100); do                       # give them 10 s, then kill what is left
      kill -0 "${PIDS[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'echo "error: \`$BASH_COMMAND\` failed (line $LINENO)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Fails, showing the end of its log, if a process started here has exited.
check_alive() {
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "error: process ${PIDS[$i]} exited; the end of ${LOGS[$i]}:" >&2
      tail -n 20 "${LOGS[$i]}" >&2
      exit 1
    fi
  done
}

rm -rf "$DIR"
mkdir -p "$DIR"
"$F" dev-certs "$DIR/certs" >/dev/null     # a development CA and a certificate for localhost

OPERATE_ARGS=()
[ "$OPERATE" = 1 ] && OPERATE_ARGS+=(--metrics-listen "$METRICS_LISTEN")
if [ "$GOVERN" = 1 ]; then   # the audit log's head is signed with this key (public key printed)
  "$F" audit keygen --out "$DIR/audit-key.pem" | tail -n 1 > "$DIR/audit-key.pub"
  OPERATE_ARGS+=(--audit-signing-key "$DIR/audit-key.pem")
fi
"$F" server --data-dir "$DIR/server" --listen "$LISTEN" --admin-listen "$ADMIN_LISTEN" \
  --tls-cert "$DIR/certs/server.pem" --tls-key "$DIR/certs/server-key.pem" "${OPERATE_ARGS[@]}" \
  --ready-file "$DIR/server.ready" >/dev/null 2>"$DIR/server.log" &
PIDS+=($!); LOGS+=("$DIR/server.log")
until [ -e "$DIR/server.ready" ]; do check_alive; sleep 0.1; done
echo "coordinator ready: gRPC https://$LISTEN, admin https://$ADMIN_LISTEN (log: $DIR/server.log)"

PROMETHEUS=
if [ "$OPERATE" = 1 ]; then
  (umask 077; printf '%s\n' "$FLOTILLA_ADMIN_TOKEN" > "$DIR/admin-token")
  echo "console: https://$ADMIN_LISTEN/ (CA $DIR/certs/ca.pem; log in with the token in $DIR/admin-token)"
  echo "metrics: http://$METRICS_LISTEN/metrics; probes: https://$ADMIN_LISTEN/healthz and /readyz"
  if command -v prometheus >/dev/null; then
    # Scraped every second so that a short job shows up; honor_labels keeps Flotilla's `job`
    # label (the job id). The alert rules are the ones deploy/ ships.
    cat > "$DIR/prometheus.yml" <<PROM
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: flotilla-coordinator
    honor_labels: true
    static_configs: [{targets: ["$METRICS_LISTEN"]}]
PROM
    prometheus --config.file "$DIR/prometheus.yml" --storage.tsdb.path "$DIR/prometheus" \
      --web.listen-address "$PROM_LISTEN" >/dev/null 2>"$DIR/prometheus.log" &
    PIDS+=($!); LOGS+=("$DIR/prometheus.log")
    PROMETHEUS=http://$PROM_LISTEN
    echo "prometheus: $PROMETHEUS (alert rules of deploy/prometheus/alerts.yml; log: $DIR/prometheus.log)"
  else
    echo "prometheus is not installed (apt-get install prometheus): metrics are served, not scraped"
  fi
fi

ADMIN=(--admin-url "https://$ADMIN_LISTEN" --ca-cert "$DIR/certs/ca.pem")
TOKEN=$("$F" enroll-token create "${ADMIN[@]}" --uses "$CLIENTS" --expires 1h --quiet)
for i in $(seq 0 $((CLIENTS - 1))); do
  if [ "$i" -ge $((CLIENTS - PY_CLIENTS)) ]; then   # a Python client, same data share and options
    "$PY" examples/python/numpy_logreg_client.py --coordinator "https://$LISTEN" \
      --ca-cert "$DIR/certs/ca.pem" --token "$TOKEN" --name "py-client-$i" \
      --state-dir "$DIR/client-$i" --partition "$i/$CLIENTS" >/dev/null 2>"$DIR/client-$i.log" &
  else
    COHORT=()
    if [ "$SHIP" = 1 ]; then COHORT=(--cohort "region=$([ $((i % 2)) = 0 ] && echo eu || echo us)"); fi
    "$F" client --coordinator "https://$LISTEN" --ca-cert "$DIR/certs/ca.pem" --token "$TOKEN" \
      --name "client-$i" --state-dir "$DIR/client-$i" --dataset digits --partition "$i/$CLIENTS" \
      "${COHORT[@]}" >/dev/null 2>"$DIR/client-$i.log" &
  fi
  PIDS+=($!); LOGS+=("$DIR/client-$i.log")
done
echo "started $CLIENTS clients, $PY_CLIENTS of them Python (logs: $DIR/client-*.log)"

if [ "$GOVERN" = 1 ]; then
  # People with roles in the tenant `default`; each token is shown once, as the last line.
  ALICE=$("$F" principal create alice --tenant default --role scientist "${ADMIN[@]}" | tail -n 1)
  BOB=$("$F" principal create bob --tenant default --role approver "${ADMIN[@]}" | tail -n 1)
  CAROL=$("$F" principal create carol --tenant default --role auditor "${ADMIN[@]}" | tail -n 1)
  "$F" tenant set default --require-approval on "${ADMIN[@]}" >/dev/null
  "$F" policy apply examples/policies/job-limits.cedar "${ADMIN[@]}"
  echo "principals alice (scientist), bob (approver), carol (auditor); tenant default requires approval"
  JOB=$(FLOTILLA_TOKEN=$ALICE "$F" job submit "${ADMIN[@]}" "$JOB_SPEC" --quiet)
  echo "alice submitted $JOB_SPEC as job $JOB: $(FLOTILLA_TOKEN=$ALICE "$F" job status "${ADMIN[@]}" "$JOB" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
  if FLOTILLA_TOKEN=$ALICE "$F" job approve "${ADMIN[@]}" "$JOB" 2>"$DIR/self-approval.err"; then
    echo "error: alice approved her own job" >&2; exit 1
  fi
  echo "alice may not approve it: $(cat "$DIR/self-approval.err")"
  FLOTILLA_TOKEN=$BOB "$F" job approve "${ADMIN[@]}" "$JOB"
else
  JOB=$("$F" job submit "${ADMIN[@]}" "$JOB_SPEC" --quiet)
  echo "submitted $JOB_SPEC as job $JOB"
fi

# A line per round on stderr, then the job's status; non-zero unless the job completed.
# In the background, waited for with `wait`: bash runs a trap only between commands, so a SIGINT or
# SIGTERM sent to this script alone would otherwise stop everything only after the job ended.
"$F" job wait "${ADMIN[@]}" "$JOB" --timeout 10m &
WAITER=$!
if ! wait "$WAITER"; then
  check_alive
  echo "error: job $JOB did not complete; see $DIR/server.log and $DIR/client-*.log" >&2
  exit 1
fi
"$F" job download "${ADMIN[@]}" "$JOB" --out "$DIR/model.safetensors"
echo "federation finished: job $JOB completed; trained model in $DIR/model.safetensors"

if [ "$OPERATE" = 1 ]; then
  echo "readyz: $(curl -fsS --cacert "$DIR/certs/ca.pem" "https://$ADMIN_LISTEN/readyz")"
  ROUNDS=$("$F" job status "${ADMIN[@]}" "$JOB" --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["history"]))')
  if [ -n "$PROMETHEUS" ]; then
    # The last scrape may predate the last commit: ask until Prometheus has seen every round.
    query() { curl -fsS "$PROMETHEUS/api/v1/query" --data-urlencode "query=$1" \
      | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)'; }
    SEEN=0
    for _ in $(seq 100); do
      SEEN=$(query "sum(flotilla_rounds_committed_total{job=\"$JOB\"})") && [ "$SEEN" = "$ROUNDS" ] && break
      check_alive; sleep 0.2
    done
    echo "prometheus: flotilla_rounds_committed_total{job=\"$JOB\"} = $SEEN; the job committed $ROUNDS rounds"
    echo "prometheus: $(query 'count(ALERTS{alertstate="firing"})') alerts firing"
    [ "$SEEN" = "$ROUNDS" ] || { echo "error: Prometheus saw $SEEN rounds committed, not $ROUNDS" >&2; exit 1; }
  fi
fi
if [ "$GOVERN" = 1 ]; then
  FLOTILLA_TOKEN=$CAROL "$F" audit verify "${ADMIN[@]}" --public-key "$DIR/audit-key.pub"
  FLOTILLA_TOKEN=$CAROL "$F" evidence-pack "${ADMIN[@]}" --job "$JOB" --out "$DIR/evidence"
  echo "evidence pack of job $JOB: $DIR/evidence/evidence.md and evidence.json"
fi
if [ "$SHIP" = 1 ]; then
  # The registry: version 1 is the trained model; the clients evaluate it on their own data.
  "$F" model register "${ADMIN[@]}" --job "$JOB" --name digits
  "$F" model evaluate "${ADMIN[@]}" digits@1 --clients "$CLIENTS" --deadline 1m
  # A release gate, then production.
  "$F" model gate set "${ADMIN[@]}" digits --min-accuracy 0.8 --max-regression 2
  "$F" model promote "${ADMIN[@]}" digits@1
  # A worse candidate (the model after one round) is refused, naming the rule.
  "$F" model register "${ADMIN[@]}" --job "$JOB" --round 1 --name digits
  "$F" model evaluate "${ADMIN[@]}" digits@2 --clients "$CLIENTS" --deadline 1m
  if "$F" model promote "${ADMIN[@]}" digits@2 2>"$DIR/gate.err"; then
    echo "error: the gate let digits@2 through" >&2; exit 1
  fi
  echo "digits@2 not promoted: $(cat "$DIR/gate.err")"
  "$F" model show "${ADMIN[@]}" digits@1
  "$F" model export "${ADMIN[@]}" digits@1 --format safetensors --out "$DIR/digits-v1.safetensors"
  # A client fetches the production model for inference with its own credential.
  "$F" client model pull digits --coordinator "https://$LISTEN" --ca-cert "$DIR/certs/ca.pem" \
    --state-dir "$DIR/client-0" --out "$DIR/pulled.safetensors"
fi
if [ "$HOLD" = 1 ]; then
  echo "everything keeps running; press Ctrl-C to stop"
  while true; do check_alive; sleep 1; done
fi
