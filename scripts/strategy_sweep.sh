#!/usr/bin/env bash
# Runs the issue-4 scenario table: Fashion-MNIST CNN, 100 clients, 10 per round, 100 rounds, for several
# strategies, label skews and attacks, and prints one markdown row per run.
#
#   scripts/strategy_sweep.sh [RUN ...]        # default: every run below
#   FLOTILLA=target/release/flotilla ROUNDS=100 OUT=results/sweep scripts/strategy_sweep.sh clean-fedavg-0.5
#
# Each run is the base scenario examples/fashion-mnist.toml with the Dirichlet α replaced and a
# [strategy] / [attack] / [round] section appended; the generated TOML is kept next to its results.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOTILLA=${FLOTILLA:-target/release/flotilla}
ROUNDS=${ROUNDS:-100}
OUT=${OUT:-results/sweep}
mkdir -p "$OUT"

# name | alpha | extra TOML (\n-separated). The base file ends with its [train] section, so extra
# lines before the first section header (e.g. max_grad_norm) land in [train].
RUNS=(
  "clean-fedavg-0.5|0.5|"
  "clean-fedavgm-0.5|0.5|[strategy]\nname = \"fedavgm\"\nserver_lr = 0.1\nmomentum = 0.9"
  "clean-fedprox-0.5|0.5|[strategy]\nname = \"fedprox\"\nmu = 0.01"
  "clean-fedadam-0.5|0.5|[strategy]\nname = \"fedadam\"\nserver_lr = 0.01"
  "clean-fedyogi-0.5|0.5|[strategy]\nname = \"fedyogi\"\nserver_lr = 0.01"
  "clean-scaffold-0.5|0.5|[strategy]\nname = \"scaffold\""
  "clean-fedavg-clip5-0.5|0.5|max_grad_norm = 5.0"
  "clean-scaffold-clip5-0.5|0.5|max_grad_norm = 5.0\n[strategy]\nname = \"scaffold\""
  "clean-fedavg-0.1|0.1|"
  "clean-fedavgm-0.1|0.1|[strategy]\nname = \"fedavgm\"\nserver_lr = 0.1\nmomentum = 0.9"
  "clean-fedprox-0.1|0.1|[strategy]\nname = \"fedprox\"\nmu = 0.01"
  "clean-fedadam-0.1|0.1|[strategy]\nname = \"fedadam\"\nserver_lr = 0.01"
  "clean-fedyogi-0.1|0.1|[strategy]\nname = \"fedyogi\"\nserver_lr = 0.01"
  "clean-scaffold-0.1|0.1|[strategy]\nname = \"scaffold\""
  "clean-fedavg-clip5-0.1|0.1|max_grad_norm = 5.0"
  "clean-scaffold-clip5-0.1|0.1|max_grad_norm = 5.0\n[strategy]\nname = \"scaffold\""
  "signflip-fedavg-0.5|0.5|[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-median-0.5|0.5|[strategy]\nname = \"median\"\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-trimmed_mean-0.5|0.5|[strategy]\nname = \"trimmed_mean\"\nbeta = 0.2\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-krum-0.5|0.5|[round]\nmin_report_fraction = 0.7\n[strategy]\nname = \"krum\"\nf = 2\nm = 5\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-norm_bound-0.5|0.5|[strategy]\nname = \"norm_bound\"\nmax_norm = 1.0\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-norm_bound2-0.5|0.5|[strategy]\nname = \"norm_bound\"\nmax_norm = 2.0\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "signflip-norm_bound05-0.5|0.5|[strategy]\nname = \"norm_bound\"\nmax_norm = 0.5\n[attack]\nkind = \"sign_flip\"\nfraction = 0.2\nscale = 4.0"
  "backdoor-fedavg-0.5|0.5|[attack]\nkind = \"backdoor\"\nfraction = 0.1\ntarget = 0\npoison_fraction = 0.5"
  "backdoor-norm_bound-0.5|0.5|[strategy]\nname = \"norm_bound\"\nmax_norm = 1.0\n[attack]\nkind = \"backdoor\"\nfraction = 0.1\ntarget = 0\npoison_fraction = 0.5"
)

want=("$@")
echo "| run | α | final accuracy | best accuracy | backdoor success | quarantined (attackers) | s/round |"
echo "|---|---|---|---|---|---|---|"
for entry in "${RUNS[@]}"; do
  IFS='|' read -r name alpha extra <<<"$entry"
  if [[ ${#want[@]} -gt 0 && ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  toml="$OUT/$name.toml"
  sed -e "s/^alpha = .*/alpha = $alpha/" -e "s/^name = \"fashion-mnist\"/name = \"$name\"/" examples/fashion-mnist.toml >"$toml"
  printf '\n%b\n' "$extra" >>"$toml"
  "$FLOTILLA" sim "$toml" --rounds "$ROUNDS" --out "$OUT/$name.json" --quiet >"$OUT/$name.log" 2>&1 || { echo "| $name | $alpha | FAILED: $(tail -1 "$OUT/$name.log") |"; continue; }
  python3 - "$OUT/$name.json" "$name" "$alpha" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
best = max(r["accuracy_per_round"]) if r["accuracy_per_round"] else r["final_accuracy"]
bd = r.get("final_backdoor_success")
bd = "—" if bd is None else f"{bd:.3f}"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['final_accuracy']:.4f} | {best:.4f} | {bd} | {r.get('quarantined_total', 0)} ({r.get('quarantined_attackers_total', 0)}) | {r['seconds_per_round']:.2f} |")
PY
done
