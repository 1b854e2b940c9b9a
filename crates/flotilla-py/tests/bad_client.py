"""A client whose fit returns something that must not be sent (--mode nan|shape|dtype|missing);
`Client.run` must raise InvalidUpdate naming the tensor, and the process exits with the traceback."""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "python"))
import flotilla  # noqa: E402
from numpy_logreg_client import SoftmaxRegression  # noqa: E402


class Bad(SoftmaxRegression):
    def __init__(self, mode, *a):
        super().__init__(*a)
        self.mode = mode

    def fit(self, params, config):
        out, n, metrics = super().fit(params, config)
        if self.mode == "nan":
            out["linear.bias"][3] = np.nan
        elif self.mode == "shape":
            out["linear.weight"] = np.ascontiguousarray(out["linear.weight"].T)
        elif self.mode == "dtype":
            out["linear.weight"] = out["linear.weight"].astype(np.float64)
        elif self.mode == "missing":
            del out["linear.bias"]
        return out, n, metrics


ap = argparse.ArgumentParser()
for a in ("--coordinator", "--ca-cert", "--token", "--state-dir", "--partition", "--mode"):
    ap.add_argument(a)
args = ap.parse_args()
x, y = flotilla.load_partition("digits", 0, 1)
flotilla.Client(args.coordinator, args.state_dir, ca_cert=args.ca_cert, token=args.token).run(
    Bad(args.mode, x, y, x[:10], y[:10])
)
