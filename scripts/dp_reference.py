#!/usr/bin/env python3
"""Reference ε values for flotilla-privacy's Rényi-DP accountant, from Google's `dp-accounting`.

Writes crates/flotilla-privacy/tests/data/dp_accounting_reference.csv, which is committed and read
by crates/flotilla-privacy/tests/it/reference.rs (every row must agree within 1% relative).

Each row is `steps` rounds of the Poisson-sampled Gaussian mechanism accounted by
`dp_accounting.rdp.RdpAccountant()` (default orders, add/remove-one neighbouring relation):

    accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
    epsilon, order = accountant.get_epsilon_and_optimal_order(delta)

Grid: sampling rate 0.001–0.2, noise multiplier 0.5–6, steps 1–20,000, δ 1e-7–1e-5: the 16
corners of that box, a few typical federated settings and a seeded sample of the interior.
The output is deterministic (no clock, fixed seed); rerunning it must leave the file unchanged.

How to run (pinned reference version; any Python ≥ 3.9):

    python3 -m venv /root/.cache/dpref-venv
    /root/.cache/dpref-venv/bin/pip install 'dp-accounting==0.6.0'
    /root/.cache/dpref-venv/bin/python scripts/dp_reference.py          # from the repository root
    /root/.cache/dpref-venv/bin/python scripts/dp_reference.py --out -  # print instead of writing
"""

import argparse
import csv
import importlib.metadata
import itertools
import pathlib
import random
import sys

PINNED = "0.6.0"

QS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2]
SIGMAS = [0.5, 0.6, 0.8, 1.0, 1.1, 1.3, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]
STEPS = [1, 2, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000]
DELTAS = [1e-7, 1e-6, 1e-5]

# Settings people actually run (DP-SGD / DP-FedAvg papers), kept explicitly.
TYPICAL = [
    (0.01, 1.1, 1000, 1e-5),
    (0.01, 1.0, 10000, 1e-5),
    (0.004, 1.1, 10000, 1e-5),
    (0.02, 0.8, 2000, 1e-6),
    (0.1, 2.0, 100, 1e-5),
    (0.05, 1.3, 500, 1e-6),
]

INTERIOR_ROWS = 42
SEED = 20261128


def settings():
    rows = list(itertools.product([QS[0], QS[-1]], [SIGMAS[0], SIGMAS[-1]],
                                  [STEPS[0], STEPS[-1]], [DELTAS[0], DELTAS[-1]]))
    rows += TYPICAL
    rng = random.Random(SEED)
    seen = set(rows)
    while len(rows) < 16 + len(TYPICAL) + INTERIOR_ROWS:
        row = (rng.choice(QS), rng.choice(SIGMAS), rng.choice(STEPS), rng.choice(DELTAS))
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = (pathlib.Path(__file__).resolve().parent.parent / "crates" / "flotilla-privacy"
                   / "tests" / "data" / "dp_accounting_reference.csv")
    parser.add_argument("--out", default=str(default_out), help="CSV path, or - for stdout")
    args = parser.parse_args()

    version = importlib.metadata.version("dp-accounting")
    if version != PINNED:
        sys.exit(f"error: dp-accounting {version} is installed; this table is pinned to {PINNED}")

    from dp_accounting import dp_event  # pylint: disable=import-outside-toplevel
    from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=import-outside-toplevel

    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="", encoding="utf-8")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sampling_rate", "noise_multiplier", "steps", "delta", "epsilon", "order"])
    for q, sigma, steps, delta in settings():
        accountant = rdp_privacy_accountant.RdpAccountant()
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
        epsilon, order = accountant.get_epsilon_and_optimal_order(delta)
        writer.writerow([repr(q), repr(sigma), steps, repr(delta), repr(float(epsilon)),
                         repr(float(order))])
    if out is not sys.stdout:
        out.close()
        print(f"wrote {args.out} (dp-accounting {version})", file=sys.stderr)


if __name__ == "__main__":
    main()
