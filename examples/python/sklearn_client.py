#!/usr/bin/env python3
"""A Flotilla client with scikit-learn: ``SGDClassifier`` (multinomial logistic loss) on its share
of digits, warm-started from the global model each round.

It joins the same jobs as ``flotilla client --dataset digits`` (e.g. ``examples/job-digits.toml``,
whose model is a weight ``[64, 10]`` and a bias ``[10]``; scikit-learn keeps the weight transposed,
``coef_`` is ``[10, 64]``). Run it, from the repository root, after ``cargo build --release`` and
``pip install scikit-learn ./crates/flotilla-py``, against a coordinator started as in
``examples/federation.sh``:

    python examples/python/sklearn_client.py --coordinator https://127.0.0.1:7070 \\
        --ca-cert fl/certs/ca.pem --token "$TOKEN" --state-dir fl/sk-0 --partition 0/10
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Dict

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

import flotilla

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from numpy_logreg_client import split_params  # noqa: E402  (weight and bias names of a linear model)


class SklearnTrainer:
    def __init__(self, x, y, x_test, y_test):
        self.x, self.y = x.reshape(len(x), -1), y
        self.x_test, self.y_test = x_test.reshape(len(x_test), -1), y_test
        self.classes = np.arange(10)

    def num_samples(self) -> int:
        return len(self.y)

    def _model(self, params: Dict[str, np.ndarray], config: Dict[str, Any]) -> SGDClassifier:
        wn, bn = split_params(params)
        clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=config.get("learning_rate", 0.1),
                            alpha=1e-4, max_iter=max(1, config.get("epochs", 1)), tol=None,
                            random_state=config.get("seed", 0) % (2**32))
        clf.fit(self.x[:10], self.y[:10])  # allocates coef_/intercept_; overwritten below
        clf.coef_ = params[wn].T.astype(np.float64).copy()
        clf.intercept_ = params[bn].astype(np.float64).copy()
        return clf

    def fit(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        wn, bn = split_params(params)
        clf = self._model(params, config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "max_iter reached": that is the local epoch budget
            clf.fit(self.x, self.y, coef_init=clf.coef_, intercept_init=clf.intercept_)
        loss = log_loss(self.y, clf.predict_proba(self.x), labels=self.classes)
        out = {wn: np.ascontiguousarray(clf.coef_.T, dtype=np.float32), bn: clf.intercept_.astype(np.float32)}
        return out, len(self.y), {"train_loss": float(loss)}

    def evaluate(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        clf = self._model(params, config)
        proba = clf.predict_proba(self.x_test)
        accuracy = float((proba.argmax(1) == self.y_test).mean())
        return float(log_loss(self.y_test, proba, labels=self.classes)), len(self.y_test), {"accuracy": accuracy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--ca-cert")
    ap.add_argument("--token")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--partition", required=True, help="I/N: this client's share of digits")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    index, of = (int(v) for v in args.partition.split("/"))
    x, y = flotilla.load_partition("digits", index, of, data_dir=args.data_dir)
    x_test, y_test = flotilla.load_test("digits", data_dir=args.data_dir)
    trainer = SklearnTrainer(x, y, x_test[index::of], y_test[index::of])
    stats = flotilla.Client(args.coordinator, args.state_dir, ca_cert=args.ca_cert, token=args.token,
                            name=f"sklearn-{index}").run(trainer)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
