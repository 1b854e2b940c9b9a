#!/usr/bin/env bash
# The long checks the project keeps, outside `.ci/run` (they take tens of minutes):
#
#   fuzz  every proptest file of the workspace (decoders, upload state machine, round machine,
#         FedBuff, secure aggregation, partitioners, accountant) at PROPTEST_CASES cases per
#         property instead of the few hundred `cargo test` runs;
#   soak  a release `flotilla server`, SOAK_CLIENTS `flotilla client` processes that are killed
#         (SIGKILL) and restarted at random intervals, and one job of SOAK_ROUNDS rounds (logistic
#         regression on digits, evaluated on the server after every commit). The server's RSS
#         (VmRSS of /proc/PID/status) is sampled at start, after warm-up, in the middle and at the
#         end and written as JSON; the script fails if the end and the after-warm-up RSS differ by
#         more than SOAK_TOLERANCE_PCT percent, or if the job fails or a process dies.
#
# Usage: scripts/soak.sh [fuzz|soak|all]        (default: all), from anywhere in the repository.
#
# Settings (environment variables, with their defaults):
#   PROPTEST_CASES=20000          cases per property (fuzz)
#   SOAK_ROUNDS=10000             rounds of the soak job
#   SOAK_WARMUP_ROUNDS=ROUNDS/10  the "after warm-up" sample is taken once this many rounds committed
#   SOAK_CLIENTS=4                client processes (2 per round, so churn is absorbed)
#   SOAK_CHURN_MIN=30 SOAK_CHURN_MAX=120   seconds a client lives before it is killed and restarted
#   SOAK_MAX_MINUTES=0            stop the job after this long (0: no limit); the result then says
#                                 how many rounds ran, and the end sample is taken at that point
#   SOAK_TOLERANCE_PCT=5          allowed RSS change between after-warm-up and end
#   SOAK_DIR=target/soak          work directory (wiped at start!)
#   SOAK_OUT=$SOAK_DIR/result.json   the result
#   SOAK_BUILD=1                  build the release binary first (0: use FLOTILLA as is)
#   FLOTILLA=target/release/flotilla   the binary
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-all}
case "$WHAT" in fuzz|soak|all) ;; *) echo "usage: $0 [fuzz|soak|all]" >&2; exit 2 ;; esac

fuzz() {
  export PROPTEST_CASES=${PROPTEST_CASES:-20000}
  # Every integration test file that uses proptest, by name: each crate's tests are one binary
  # (`it`) with a module per file, so `NAME::` selects that file's tests in every crate.
  local names
  names=$(grep -l proptest crates/*/tests/it/*.rs | xargs -n1 basename | sed 's/\.rs$//' | sort -u)
  echo "fuzz: PROPTEST_CASES=$PROPTEST_CASES over: $(echo $names)"
  local filters=()
  for n in $names; do filters+=("$n::"); done
  time cargo test --workspace --locked --test it -- "${filters[@]}"
}

soak() {
  local F=${FLOTILLA:-target/release/flotilla}
  local DIR=${SOAK_DIR:-target/soak}
  local OUT=${SOAK_OUT:-$DIR/result.json}
  local ROUNDS=${SOAK_ROUNDS:-10000}
  local WARMUP=${SOAK_WARMUP_ROUNDS:-$((ROUNDS / 10))}
  local CLIENTS=${SOAK_CLIENTS:-4}
  local CHURN_MIN=${SOAK_CHURN_MIN:-30} CHURN_MAX=${SOAK_CHURN_MAX:-120}
  local MAX_MINUTES=${SOAK_MAX_MINUTES:-0}
  local TOL=${SOAK_TOLERANCE_PCT:-5}
  [ "$WARMUP" -lt "$ROUNDS" ] || WARMUP=$((ROUNDS / 10))
  if [ "${SOAK_BUILD:-1}" = 1 ]; then
    time cargo build --release --locked
  fi
  command -v "$F" >/dev/null || { echo "error: no flotilla binary at $F" >&2; exit 1; }
  export FLOTILLA_ADMIN_TOKEN=${FLOTILLA_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  local port admin_port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

  rm -rf "$DIR"
  mkdir -p "$DIR"
  PIDS=()
  trap soak_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "$F" dev-certs "$DIR/certs" >/dev/null
  RUST_LOG=${RUST_LOG:-warn} "$F" server --data-dir "$DIR/server" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin_port" --tls-cert "$DIR/certs/server.pem" \
    --tls-key "$DIR/certs/server-key.pem" --ready-file "$DIR/server.ready" >/dev/null 2>"$DIR/server.log" &
  SERVER=$!
  PIDS+=("$SERVER")
  until [ -e "$DIR/server.ready" ]; do
    kill -0 "$SERVER" 2>/dev/null || { echo "error: the server exited; see $DIR/server.log" >&2; tail -5 "$DIR/server.log" >&2; exit 1; }
    sleep 0.1
  done
  local ADMIN=(--admin-url "https://127.0.0.1:$admin_port" --ca-cert "$DIR/certs/ca.pem")
  local rss_start
  rss_start=$(rss "$SERVER")

  local token
  token=$("$F" enroll-token create "${ADMIN[@]}" --uses "$CLIENTS" --expires 24h --quiet)
  for i in $(seq 0 $((CLIENTS - 1))); do
    churn "$i" &
    PIDS+=($!)
  done

  cat >"$DIR/job.toml" <<EOF
# The soak job: logistic regression on digits, evaluated after every commit.
name = "soak"
seed = 7
rounds = $ROUNDS
clients_per_round = 2
[round]
min_clients = 2
over_selection = 1.0
deadline_seconds = 5           # a killed client costs at most this
min_report_fraction = 0.5
selection_window_ms = 0
retry_after_ms = 50
[model]
kind = "logreg"
dataset = "digits"
[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[eligibility]
min_samples = 1
[evaluation]
dataset = "digits"
EOF
  local job started
  job=$("$F" job submit "${ADMIN[@]}" "$DIR/job.toml" --quiet)
  started=$(date +%s)
  echo "soak: job $job, $ROUNDS rounds, $CLIENTS churning clients; server pid $SERVER, log $DIR/server.log"

  local rss_warm="" rss_mid="" rss_end="" warm_at=0 mid_at=0 done_rounds=0 state=running stopped_early=false
  while :; do
    kill -0 "$SERVER" 2>/dev/null || { echo "error: the server died; see $DIR/server.log" >&2; exit 1; }
    local line
    line=$("$F" job list "${ADMIN[@]}" --json | python3 -c "import json,sys; j=[x for x in json.load(sys.stdin) if str(x['job_id'])=='$job'][0]; print(j['state'], j['rounds_completed'])")
    state=${line% *}
    done_rounds=${line#* }
    if [ -z "$rss_warm" ] && [ "$done_rounds" -ge "$WARMUP" ]; then
      rss_warm=$(rss "$SERVER"); warm_at=$done_rounds
      echo "soak: warm-up RSS $rss_warm KiB at round $done_rounds ($(( $(date +%s) - started )) s)"
    fi
    local elapsed=$(( $(date +%s) - started ))
    # The middle: half the rounds, or half the time limit if there is one and it comes first.
    if [ -z "$rss_mid" ] && [ -n "$rss_warm" ] && { [ "$done_rounds" -ge $((ROUNDS / 2)) ] || { [ "$MAX_MINUTES" -gt 0 ] && [ "$elapsed" -ge $((MAX_MINUTES * 30)) ]; }; }; then
      rss_mid=$(rss "$SERVER"); mid_at=$done_rounds
      echo "soak: middle RSS $rss_mid KiB at round $done_rounds ($(( $(date +%s) - started )) s)"
    fi
    [ "$state" = running ] || break
    if [ "$MAX_MINUTES" -gt 0 ] && [ $(( $(date +%s) - started )) -ge $((MAX_MINUTES * 60)) ]; then
      stopped_early=true
      break
    fi
    sleep 5
  done
  rss_end=$(rss "$SERVER")
  local duration=$(( $(date +%s) - started ))
  if $stopped_early; then
    "$F" job cancel "${ADMIN[@]}" "$job" --reason "soak time limit" >/dev/null
  fi
  local restarts
  restarts=$(cat "$DIR"/restarts-* 2>/dev/null | wc -l)
  python3 - "$OUT" <<EOF
import json, os, platform, subprocess, sys, datetime
warm, end = "$rss_warm", $rss_end
ok_state = "$state" == "completed" or "$stopped_early" == "true"
growth = None if not warm else 100.0 * ($rss_end - int(warm)) / int(warm)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
res = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": {"cores": os.cpu_count(), "cpu": cpu},
    "rounds_target": $ROUNDS,
    "rounds_completed": $done_rounds,
    "job_state": "$state",
    "stopped_at_time_limit": "$stopped_early" == "true",
    "duration_s": $duration,
    "clients": $CLIENTS,
    "client_restarts": $restarts,
    "rss_kib": {
        "start": $rss_start,
        "after_warm_up": int(warm) if warm else None,
        "middle": int("$rss_mid") if "$rss_mid" else None,
        "end": end,
    },
    "sampled_at_round": {"after_warm_up": $warm_at, "middle": $mid_at, "end": $done_rounds},
    "growth_after_warm_up_pct": growth,
    "tolerance_pct": $TOL,
}
res["ok"] = bool(ok_state and growth is not None and abs(growth) <= $TOL)
json.dump(res, open(sys.argv[1], "w"), indent=2)
print(json.dumps(res, indent=2))
sys.exit(0 if res["ok"] else 1)
EOF
}

# VmRSS of a process, KiB.
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Client I: started, killed with SIGKILL after a random lifetime, started again, until stopped.
churn() {
  local i=$1 child="" nap=""
  trap '[ -n "$child" ] && kill -KILL $child 2>/dev/null; [ -n "$nap" ] && kill $nap 2>/dev/null; exit 0' TERM
  while :; do
    "$F" client --coordinator "https://127.0.0.1:$port" --ca-cert "$DIR/certs/ca.pem" --token "$token" \
      --name "soak-$i" --state-dir "$DIR/client-$i" --dataset digits --partition "$i/$CLIENTS" \
      >/dev/null 2>>"$DIR/client-$i.log" &
    child=$!
    sleep $((CHURN_MIN + RANDOM % (CHURN_MAX - CHURN_MIN + 1))) &
    nap=$!
    wait $nap || true
    kill -KILL $child 2>/dev/null || true
    wait $child 2>/dev/null || true
    echo restart >>"$DIR/restarts-$i"
  done
}

soak_stop() {
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "${PIDS[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}

case "$WHAT" in
  fuzz) fuzz ;;
  soak) soak ;;
  all) fuzz; soak ;;
esac
