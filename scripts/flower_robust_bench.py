#!/usr/bin/env python3
"""Flower's robust aggregation rules on K updates of D float32, for `flotilla bench aggregate`.

Times flwr.server.strategy.aggregate's aggregate_median, aggregate_trimmed_avg (proportion β) and
aggregate_krum (f malicious, Krum: to_keep = 0) on one pre-generated list of K (ndarrays, n) results,
plus numpy's gemv weighted mean as the memory-speed reference. Prints one JSON object:
{"K", "D", "repeats", "methods": {name: {"median_s", "min_s", "gb_per_s"}}}, GB/s = K·D·4 / median.

Run with the Flower peer's venv (../shared/peers/flower/setup.sh):
  ~/.cache/flower-peer/venv/bin/python scripts/flower_robust_bench.py --K 100 --D 1000000
"""
import argparse
import gc
import json
import statistics
import time

import numpy as np
from flwr.server.strategy.aggregate import (aggregate_krum, aggregate_median,
                                            aggregate_trimmed_avg)


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--D", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--krum-f", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((a.K, a.D), dtype=np.float32)
    weights = rng.integers(10, 101, size=a.K)
    results = [([stack[i]], int(weights[i])) for i in range(a.K)]
    f = a.krum_f if a.krum_f is not None else a.K // 10
    nbytes = a.K * a.D * 4
    w = weights.astype(np.float32)
    methods = {
        "np_wavg_gemv": lambda: (w @ stack) / w.sum(),
        "median": lambda: aggregate_median(results),
        "trimmed_mean": lambda: aggregate_trimmed_avg(results, a.beta),
        "krum": lambda: aggregate_krum(results, f, 0),
    }
    out = {}
    for name, fn in methods.items():
        if name in a.skip:
            continue
        ts = timed(fn, a.repeats)
        med = statistics.median(ts)
        out[name] = {"median_s": round(med, 4), "min_s": round(min(ts), 4),
                     "gb_per_s": round(nbytes / med / 1e9, 3)}
    print(json.dumps({"K": a.K, "D": a.D, "repeats": a.repeats, "beta": a.beta, "krum_f": f,
                      "methods": out}))


if __name__ == "__main__":
    main()
