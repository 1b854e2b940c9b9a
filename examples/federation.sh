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
set -euo pipefail

F=${FLOTILLA:-target/release/flotilla}
DIR=${FLOTILLA_DIR:-fl}
LISTEN=${FLOTILLA_LISTEN:-127.0.0.1:7070}
ADMIN_LISTEN=${FLOTILLA_ADMIN_LISTEN:-127.0.0.1:7443}
CLIENTS=${FLOTILLA_CLIENTS:-10}
JOB_SPEC=${FLOTILLA_JOB:-examples/job-digits.toml}
PY_CLIENTS=${FLOTILLA_PYTHON_CLIENTS:-0}
PY=${FLOTILLA_PYTHON:-python3}
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

"$F" server --data-dir "$DIR/server" --listen "$LISTEN" --admin-listen "$ADMIN_LISTEN" \
  --tls-cert "$DIR/certs/server.pem" --tls-key "$DIR/certs/server-key.pem" \
  --ready-file "$DIR/server.ready" >/dev/null 2>"$DIR/server.log" &
PIDS+=($!); LOGS+=("$DIR/server.log")
until [ -e "$DIR/server.ready" ]; do check_alive; sleep 0.1; done
echo "coordinator ready: gRPC https://$LISTEN, admin https://$ADMIN_LISTEN (log: $DIR/server.log)"

ADMIN=(--admin-url "https://$ADMIN_LISTEN" --ca-cert "$DIR/certs/ca.pem")
TOKEN=$("$F" enroll-token create "${ADMIN[@]}" --uses "$CLIENTS" --expires 1h --quiet)
for i in $(seq 0 $((CLIENTS - 1))); do
  if [ "$i" -ge $((CLIENTS - PY_CLIENTS)) ]; then   # a Python client, same data share and options
    "$PY" examples/python/numpy_logreg_client.py --coordinator "https://$LISTEN" \
      --ca-cert "$DIR/certs/ca.pem" --token "$TOKEN" --name "py-client-$i" \
      --state-dir "$DIR/client-$i" --partition "$i/$CLIENTS" >/dev/null 2>"$DIR/client-$i.log" &
  else
    "$F" client --coordinator "https://$LISTEN" --ca-cert "$DIR/certs/ca.pem" --token "$TOKEN" \
      --name "client-$i" --state-dir "$DIR/client-$i" --dataset digits --partition "$i/$CLIENTS" \
      >/dev/null 2>"$DIR/client-$i.log" &
  fi
  PIDS+=($!); LOGS+=("$DIR/client-$i.log")
done
echo "started $CLIENTS clients, $PY_CLIENTS of them Python (logs: $DIR/client-*.log)"

JOB=$("$F" job submit "${ADMIN[@]}" "$JOB_SPEC" --quiet)
echo "submitted $JOB_SPEC as job $JOB"

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
