#!/usr/bin/env python3
"""A Flotilla client in plain numpy: softmax regression on its share of the digits data set.

It trains whatever linear model the job names — a weight ``[inputs, classes]`` and a bias
``[classes]``, e.g. the built-in ``logreg`` (``linear.weight``, ``linear.bias``) or a custom model
given by ``[model] initial`` — so it joins the same jobs as ``flotilla client --dataset digits``.
No dependency beyond numpy and the ``flotilla`` package.

Run a federation of Python and Rust clients (from the repository root, after
``cargo build --release`` and ``pip install ./crates/flotilla-py``):

    FLOTILLA_PYTHON=.venv/bin/python FLOTILLA_PYTHON_CLIENTS=5 examples/federation.sh

or start one by hand against a running coordinator:

    python examples/python/numpy_logreg_client.py --coordinator https://127.0.0.1:7070 \\
        --ca-cert fl/certs/ca.pem --token "$TOKEN" --state-dir fl/py-0 --partition 0/10

Ctrl-C (or SIGTERM) stops it gracefully; it prints its counters as JSON on exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Tuple

import numpy as np

import flotilla


def split_params(params: Dict[str, np.ndarray]) -> Tuple[str, str]:
    """The names of the weight (2-D) and bias (1-D) tensors of a linear model."""
    weight = [n for n, a in params.items() if a.ndim == 2]
    bias = [n for n, a in params.items() if a.ndim == 1]
    if len(params) != 2 or len(weight) != 1 or len(bias) != 1:
        shapes = {n: a.shape for n, a in params.items()}
        raise ValueError(f"this client trains a linear model (a 2-D weight and a 1-D bias); the job's is {shapes}")
    return weight[0], bias[0]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxRegression:
    """A trainer: ``num_samples``, ``fit`` and ``evaluate`` over numpy arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
        self.x, self.y = x.reshape(len(x), -1), y
        self.x_test, self.y_test = x_test.reshape(len(x_test), -1), y_test

    def num_samples(self) -> int:
        return len(self.y)

    def fit(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        wn, bn = split_params(params)
        w, b = params[wn].copy(), params[bn].copy()
        w0, b0 = params[wn], params[bn]
        lr, mu = config["learning_rate"], config["proximal_mu"]
        batch = max(1, config["batch_size"])
        rng = np.random.default_rng(config["seed"])
        corr = config["scaffold_correction"]  # SCAFFOLD: c - c_i, added to every gradient
        onehot = np.eye(w.shape[1], dtype=np.float32)[self.y]
        losses, steps = [], 0
        for _ in range(config["epochs"]):
            order = rng.permutation(len(self.y))
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                xb, yb = self.x[idx], onehot[idx]
                p = softmax(xb @ w + b)
                losses.append(float(-np.log(np.maximum((p * yb).sum(axis=1), 1e-12)).mean()))
                g = (p - yb) / len(idx)
                gw, gb = xb.T @ g, g.sum(axis=0)
                if corr is not None:
                    gw, gb = gw + corr[wn], gb + corr[bn]
                if mu > 0:  # FedProx: the proximal term's gradient
                    gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
                w -= lr * gw
                b -= lr * gb
                steps += 1
        metrics = {"train_loss": float(np.mean(losses)), "local_steps": float(steps)}
        return {wn: w.astype(np.float32), bn: b.astype(np.float32)}, len(self.y), metrics

    def evaluate(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        wn, bn = split_params(params)
        p = softmax(self.x_test @ params[wn] + params[bn])
        loss = float(-np.log(np.maximum(p[np.arange(len(self.y_test)), self.y_test], 1e-12)).mean())
        accuracy = float((p.argmax(axis=1) == self.y_test).mean())
        return loss, len(self.y_test), {"accuracy": accuracy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coordinator", required=True, help="https://host:port of the coordinator's gRPC endpoint")
    ap.add_argument("--ca-cert", help="PEM file of the CA that signed the coordinator's certificate")
    ap.add_argument("--token", help="enrollment token (first start only)")
    ap.add_argument("--state-dir", required=True, help="where the client keeps its credential")
    ap.add_argument("--partition", required=True, help="I/N: this client's share of digits")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--name", default=None, help="client name shown in the admin API")
    ap.add_argument("--data-dir", default=None, help="datasets (default $FLOTILLA_DATA_DIR, else ./data)")
    args = ap.parse_args()
    index, of = (int(v) for v in args.partition.split("/"))

    x, y = flotilla.load_partition(args.dataset, index, of, data_dir=args.data_dir)
    x_test, y_test = flotilla.load_test(args.dataset, data_dir=args.data_dir)
    # Each client evaluates on its own slice of the test split (its "held-out" data).
    trainer = SoftmaxRegression(x, y, x_test[index::of], y_test[index::of])
    client = flotilla.Client(
        args.coordinator,
        args.state_dir,
        ca_cert=args.ca_cert,
        token=args.token,
        name=args.name or f"py-{index}",
    )
    stats = client.run(trainer)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
