#!/usr/bin/env bash
# Bytes on the wire per upload under each `[compression]`, counted by the coordinator: one
# `flotilla server` and 10 `flotilla client` processes (digits, partitions i/10) over TLS on
# loopback run `examples/job-digits.toml` with `rounds = 5` once per kind, one job after another,
# and `GET /v1/metrics`'s `received_bytes` (whole UploadUpdate request bodies) is read before and
# after each job. One JSON line per kind. Run from the repository root after `cargo build --release`.
#
#   scripts/compression_wire.sh [KIND...]   # default: dense q8 q4 top1 secagg secagg-q8
set -euo pipefail
F=${FLOTILLA:-target/release/flotilla}
KINDS=("$@"); [ ${#KINDS[@]} -gt 0 ] || KINDS=(dense q8 q4 top1 secagg secagg-q8)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-wire.XXXXXX")
export FLOTILLA_ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
PIDS=()
trap 'kill ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT

base=$(sed -e 's/^rounds = 20/rounds = 5/' -e 's/^name = "digits"/name = "wire"/' examples/job-digits.toml)
section() {
  case $1 in
    dense) ;;
    q8) printf '[compression]\nkind = "quantize"\nbits = 8\n' ;;
    q4) printf '[compression]\nkind = "quantize"\nbits = 4\n' ;;
    top1) printf '[compression]\nkind = "topk"\nfraction = 0.01\n' ;;
    secagg) printf '[secagg]\nclip_range = 0.25\n' ;;
    secagg-q8) printf '[secagg]\nclip_range = 0.25\n[compression]\nkind = "quantize"\nbits = 8\n' ;;
    *) echo "error: unknown kind $1 (dense q8 q4 top1 secagg secagg-q8)" >&2; exit 2 ;;
  esac
}
for kind in "${KINDS[@]}"; do printf '%s\n%s' "$base" "$(section "$kind")" > "$DIR/$kind.toml"; done

LISTEN=${FLOTILLA_LISTEN:-127.0.0.1:7170}
ADMIN_LISTEN=${FLOTILLA_ADMIN_LISTEN:-127.0.0.1:7543}
"$F" dev-certs "$DIR/certs" >/dev/null
"$F" server --data-dir "$DIR/server" --listen "$LISTEN" --admin-listen "$ADMIN_LISTEN" \
  --tls-cert "$DIR/certs/server.pem" --tls-key "$DIR/certs/server-key.pem" \
  --ready-file "$DIR/ready" >/dev/null 2>"$DIR/server.log" &
PIDS+=($!)
until [ -e "$DIR/ready" ]; do kill -0 "${PIDS[0]}" || { tail "$DIR/server.log" >&2; exit 1; }; sleep 0.1; done
ADMIN=(--admin-url "https://$ADMIN_LISTEN" --ca-cert "$DIR/certs/ca.pem")
TOKEN=$("$F" enroll-token create "${ADMIN[@]}" --uses 10 --expires 1h --quiet)
for i in $(seq 0 9); do
  "$F" client --coordinator "https://$LISTEN" --ca-cert "$DIR/certs/ca.pem" --token "$TOKEN" \
    --state-dir "$DIR/client-$i" --dataset digits --partition "$i/10" >/dev/null 2>"$DIR/client-$i.log" &
  PIDS+=($!)
done
counters() {
  curl -fsS --cacert "$DIR/certs/ca.pem" -H "authorization: Bearer $FLOTILLA_ADMIN_TOKEN" \
    "https://$ADMIN_LISTEN/v1/metrics" |
    python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["received_bytes"], m["uploads_accepted"])'
}
for kind in "${KINDS[@]}"; do
  read -r b0 u0 < <(counters)
  JOB=$("$F" job submit "${ADMIN[@]}" "$DIR/$kind.toml" --quiet)
  "$F" job wait "${ADMIN[@]}" "$JOB" --timeout 10m >/dev/null 2>&1
  read -r b1 u1 < <(counters)
  acc=$("$F" job status "${ADMIN[@]}" "$JOB" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["history"][-1]["metrics"].get("eval_accuracy"))')
  echo "{\"kind\":\"$kind\",\"uploads\":$((u1 - u0)),\"received_bytes\":$((b1 - b0)),\"bytes_per_upload\":$(((b1 - b0) / (u1 - u0))),\"accuracy\":$acc}"
done
