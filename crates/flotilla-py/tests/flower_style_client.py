"""A client written for Flower — the NumPyClient interface of Flower's quickstart, list-of-arrays
parameters — run against a Flotilla coordinator unchanged with flotilla.flower.run_numpy_client."""

import argparse

import numpy as np

try:  # the real base class when Flower is installed; the interface is the same without it
    from flwr.client import NumPyClient
except ImportError:  # pragma: no cover
    NumPyClient = object

import flotilla
import flotilla.flower


class DigitsClient(NumPyClient):
    """Softmax regression on digits, Flower style."""

    def __init__(self, x, y, x_test, y_test):
        self.x, self.y = x.reshape(len(x), -1), y
        self.x_test, self.y_test = x_test.reshape(len(x_test), -1), y_test
        rng = np.random.default_rng(1)
        self.w = rng.normal(0, 0.01, (self.x.shape[1], 10)).astype(np.float32)
        self.b = np.zeros(10, np.float32)

    def get_parameters(self, config):
        return [self.w, self.b]

    def set_parameters(self, parameters):
        self.w, self.b = (np.array(p, dtype=np.float32) for p in parameters)

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        lr = float(config.get("learning_rate", 0.1))
        rng = np.random.default_rng(int(config.get("seed", 0)))
        onehot = np.eye(10, dtype=np.float32)[self.y]
        for _ in range(int(config.get("epochs", 1))):
            for idx in np.array_split(rng.permutation(len(self.y)), max(1, len(self.y) // 32)):
                z = self.x[idx] @ self.w + self.b
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                g = (p - onehot[idx]) / len(idx)
                self.w -= lr * (self.x[idx].T @ g)
                self.b -= lr * g.sum(axis=0)
        return self.get_parameters({}), len(self.y), {"note": "trained"}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        z = self.x_test @ self.w + self.b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(self.y_test)), self.y_test] + 1e-12).mean())
        return loss, len(self.y_test), {"accuracy": float((p.argmax(1) == self.y_test).mean())}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for a in ("--coordinator", "--ca-cert", "--token", "--state-dir", "--partition"):
        ap.add_argument(a)
    args = ap.parse_args()
    i, n = (int(v) for v in args.partition.split("/"))
    x, y = flotilla.load_partition("digits", i, n)
    xt, yt = flotilla.load_test("digits")
    import json

    stats = flotilla.flower.run_numpy_client(
        DigitsClient(x, y, xt[i::n], yt[i::n]), args.coordinator, args.state_dir,
        ca_cert=args.ca_cert, token=args.token,
    )
    print(json.dumps(stats))
