#!/usr/bin/env bash
# Utility of central DP-FedAvg on the Fashion-MNIST CNN (issue 5): each DP run next to the same run
# without DP, and one markdown row per run.
#
#   scripts/dp_utility.sh [RUN ...]        # default: every run below
#   FLOTILLA=target/release/flotilla ROUNDS=100 SIGMA=1.0 OUT=results/dp scripts/dp_utility.sh dp-10of100
#
# Every run is examples/fashion-mnist.toml (CNN, Dirichlet α 0.5, 1 local epoch, batch 32, lr 0.1,
# seed 42) with the client counts replaced and a [privacy] section appended. σ is chosen with
# `flotilla dp epsilon` so that ε ≤ 8 at δ = 1e-5 after ROUNDS rounds at q = clients_per_round /
# clients = 0.1: σ = 1.0 gives ε = 7.90 for 100 rounds (SIGMA = 1.4: ε = 7.65 for 300 rounds).
# max_epsilon = 8 makes the budget binding.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOTILLA=${FLOTILLA:-target/release/flotilla}
ROUNDS=${ROUNDS:-100}
OUT=${OUT:-results/dp}
SIGMA=${SIGMA:-1.0}
mkdir -p "$OUT"

PRIV_FIXED="[privacy]\nnoise_multiplier = $SIGMA\nclip_norm = CLIP\ndelta = 1e-5\nmax_epsilon = 8.0"
# Adaptive clipping (Andrew et al. 2021) tracks the median update norm; with 10 clients per round the
# count noise must be raised above σ/2 (default m/20 = 0.5), which costs 15% more noise on the sum.
PRIV_ADAPTIVE="[privacy]\nnoise_multiplier = $SIGMA\ndelta = 1e-5\nmax_epsilon = 8.0\n[privacy.adaptive]\ninitial_clip_norm = 1.0\ntarget_quantile = 0.5\nlearning_rate = 0.2"

# name | clients | clients_per_round | extra TOML
RUNS=(
  "nodp-10of100|100|10|"
  "dp-10of100-adaptive|100|10|$PRIV_ADAPTIVE\ncount_noise_std = 1.0"
  "dp-10of100-clip1|100|10|${PRIV_FIXED/CLIP/1.0}"
  "nodp-100of1000|1000|100|"
  "dp-100of1000-adaptive|1000|100|$PRIV_ADAPTIVE"
  "dp-100of1000-clip1|1000|100|${PRIV_FIXED/CLIP/1.0}"
)

want=("$@")
echo "| run | clients (per round) | final accuracy | best accuracy | ε at δ = 1e-5 | rounds | s/round |"
echo "|---|---|---|---|---|---|---|"
for entry in "${RUNS[@]}"; do
  IFS='|' read -r name clients per_round extra <<<"$entry"
  if [[ ${#want[@]} -gt 0 && ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  toml="$OUT/$name.toml"
  sed -e "s/^clients = .*/clients = $clients/" -e "s/^clients_per_round = .*/clients_per_round = $per_round/" \
      -e "s/^name = \"fashion-mnist\"/name = \"$name\"/" examples/fashion-mnist.toml >"$toml"
  printf '\n%b\n' "$extra" >>"$toml"
  "$FLOTILLA" sim "$toml" --rounds "$ROUNDS" --out "$OUT/$name.json" --quiet >"$OUT/$name.log" 2>&1 || { echo "| $name | FAILED: $(tail -1 "$OUT/$name.log") |"; continue; }
  python3 - "$OUT/$name.json" "$name" "$clients" "$per_round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
best = max(r["accuracy_per_round"]) if r["accuracy_per_round"] else r["final_accuracy"]
eps = r.get("epsilon_spent")
eps = "—" if eps is None else f"{eps:.3f}"
print(f"| {sys.argv[2]} | {sys.argv[3]} ({sys.argv[4]}) | {r['final_accuracy']:.4f} | {best:.4f} | {eps} | {r['rounds']} | {r['seconds_per_round']:.2f} |")
PY
done
