#!/usr/bin/env python3
"""Overhead of the Python client against the Rust client, side by side in one digits job.

A coordinator runs one job (logistic regression on digits, plain FedAvg) with N Rust clients
(`flotilla client --dataset digits`) and N Python clients (examples/python/numpy_logreg_client.py)
in every round. Each client reports, when stopped, the wall time of its completed tasks (task
received → upload acknowledged) and the time spent in the trainer: the Rust client's burn
training, the Python client's own `fit`/`evaluate` (`user_seconds`). Their difference is what the
client costs outside the user's training: network, TLS, checks, and for Python the boundary (arrays
in and out, the GIL). The script prints both per task and their ratio.

    cargo build --release
    python3 -m venv .venv && .venv/bin/pip install ./crates/flotilla-py
    .venv/bin/python scripts/python_overhead.py --rounds 30 --out results/python_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
import flotilla  # noqa: E402

JOB = """name = "overhead"
seed = 5
rounds = {rounds}
clients_per_round = {total}

[round]
min_clients = {total}
over_selection = 1.0
deadline_seconds = 60
min_report_fraction = 1.0
retry_after_ms = 100

[model]
kind = "logreg"
dataset = "digits"

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds(debug: str) -> float:
    """A Rust `Duration` as `Debug` prints it (`1.5s`, `250.1ms`, `12µs`, `7ns`)."""
    m = re.fullmatch(r"([0-9.]+)(s|ms|µs|ns)", debug)
    if not m:
        raise ValueError(f"not a Duration: {debug!r}")
    return float(m.group(1)) * {"s": 1, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}[m.group(2)]


def rust_stats(log: str) -> dict:
    line = [l for l in log.splitlines() if "client finished" in l][-1]
    field = lambda name: re.search(name + r": ([^,}\s]+)", line).group(1)  # noqa: E731
    return {"tasks_done": int(field("tasks_done")), "task_seconds": seconds(field("task_time")),
            "train_seconds": seconds(field("train_time"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="of each kind")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dir", default="fl-overhead")
    ap.add_argument("--out")
    args = ap.parse_args()
    binary = os.environ.get("FLOTILLA", str(ROOT / "target" / "release" / "flotilla"))
    work = Path(args.dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([binary, "dev-certs", str(work / "certs")], check=True, capture_output=True)
    grpc, admin_port, token = free_port(), free_port(), secrets.token_hex(16)
    ca = str(work / "certs/ca.pem")
    server = subprocess.Popen(
        [binary, "server", "--data-dir", str(work / "server"), "--listen", f"127.0.0.1:{grpc}",
         "--admin-listen", f"127.0.0.1:{admin_port}", "--tls-cert", str(work / "certs/server.pem"),
         "--tls-key", str(work / "certs/server-key.pem"), "--ready-file", str(work / "ready")],
        env={**os.environ, "FLOTILLA_ADMIN_TOKEN": token, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    clients = []
    try:
        while not (work / "ready").exists():
            time.sleep(0.1)
        admin = flotilla.Admin(f"https://127.0.0.1:{admin_port}", ca_cert=ca, token=token)
        n = args.clients
        enroll = admin.create_token(uses=2 * n)
        common = ["--coordinator", f"https://127.0.0.1:{grpc}", "--ca-cert", ca, "--token", enroll]
        # numpy's BLAS threads spin after each product; with six clients on a few cores they would
        # slow every process. One BLAS thread per client, as for any many-clients-per-host run.
        env = {**os.environ, "RUST_LOG": "warn,flotilla::net_cmd=info", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1"}
        for i in range(2 * n):
            part = ["--partition", f"{i}/{2 * n}", "--state-dir", str(work / f"c{i}")]
            cmd = ([binary, "client", *common, *part, "--dataset", "digits"] if i < n else
                   [sys.executable, str(ROOT / "examples/python/numpy_logreg_client.py"), *common, *part])
            clients.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        (work / "job.toml").write_text(JOB.format(rounds=args.rounds, total=2 * n))
        job = admin.submit_job(work / "job.toml")
        status = flotilla.wait_for_job(admin, job, timeout=3600)
        assert status["state"] == "completed", status
        for c in clients:
            c.send_signal(signal.SIGTERM)
        outs = [c.communicate(timeout=30) for c in clients]
        rust = [rust_stats(err) for _, err in outs[:n]]
        py = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs[n:]]

        def per_task(stats, inner):
            tasks = sum(s["tasks_done"] for s in stats)
            total = sum(s["task_seconds"] for s in stats)
            inside = sum(s[inner] for s in stats)
            return {"tasks": tasks, "task_ms": 1e3 * total / tasks, "trainer_ms": 1e3 * inside / tasks,
                    "outside_ms": 1e3 * (total - inside) / tasks}

        r, p = per_task(rust, "train_seconds"), per_task(py, "user_seconds")
        # The Python boundary alone: inside the SDK's trainer call, outside the user's code.
        p["boundary_ms"] = 1e3 * sum(s["train_seconds"] - s["user_seconds"] for s in py) / p["tasks"]
        result = {"rounds": args.rounds, "clients_each": n, "rust": r, "python": p,
                  "outside_ratio_python_over_rust": p["outside_ms"] / r["outside_ms"]}
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
