#!/usr/bin/env python3
"""The PyTorch example end to end: a coordinator, 5 clients running
examples/python/pytorch_mnist_client.py (a CNN on MNIST-10k, its own model: a custom-layout job
from the initial file the example writes), the job run to the end, the trained model downloaded
and its accuracy on the test split printed (and checked against --min-accuracy).

Needs the release binary, the data and a Python with torch and flotilla:

    cargo build --release && target/release/flotilla data fetch mnist
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch ./crates/flotilla-py
    .venv-torch/bin/python scripts/pytorch_mnist.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "python"))

import flotilla  # noqa: E402
from pytorch_mnist_client import TorchTrainer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JOB = """name = "pytorch-mnist"
seed = 1
rounds = {rounds}
clients_per_round = {clients}

[round]
min_clients = {clients}
over_selection = 1.0
deadline_seconds = 300
min_report_fraction = 1.0
retry_after_ms = 300

[model]
initial = "init.safetensors"   # written by pytorch_mnist_client.py --write-initial

[train]
local_epochs = {epochs}
batch_size = 32
learning_rate = 0.05
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--min-accuracy", type=float, default=0.95)
    ap.add_argument("--dir", default="fl-torch", help="work directory (wiped at start)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    binary = os.environ.get("FLOTILLA", str(ROOT / "target" / "release" / "flotilla"))
    flotilla.load_test("mnist")  # fails now, naming `flotilla data fetch mnist`, if the data is missing
    work = Path(args.dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([binary, "dev-certs", str(work / "certs")], check=True, capture_output=True)
    grpc, admin_port, token = free_port(), free_port(), secrets.token_hex(16)
    procs = []
    started = time.monotonic()
    try:
        procs.append(subprocess.Popen(
            [binary, "server", "--data-dir", str(work / "server"), "--listen", f"127.0.0.1:{grpc}",
             "--admin-listen", f"127.0.0.1:{admin_port}", "--tls-cert", str(work / "certs/server.pem"),
             "--tls-key", str(work / "certs/server-key.pem"), "--ready-file", str(work / "ready")],
            env={**os.environ, "FLOTILLA_ADMIN_TOKEN": token}, stdout=subprocess.DEVNULL,
            stderr=open(work / "server.log", "w")))
        while not (work / "ready").exists():
            if procs[0].poll() is not None:
                raise SystemExit(f"the coordinator exited; see {work}/server.log")
            time.sleep(0.1)
        ca = str(work / "certs/ca.pem")
        admin = flotilla.Admin(f"https://127.0.0.1:{admin_port}", ca_cert=ca, token=token)
        client = [sys.executable, str(ROOT / "examples/python/pytorch_mnist_client.py")]
        subprocess.run([*client, "--write-initial", str(work / "init.safetensors")], check=True)
        (work / "job.toml").write_text(JOB.format(rounds=args.rounds, clients=args.clients, epochs=args.epochs))
        enroll = admin.create_token(uses=args.clients)
        for i in range(args.clients):
            procs.append(subprocess.Popen(
                [*client, "--coordinator", f"https://127.0.0.1:{grpc}", "--ca-cert", ca, "--token", enroll,
                 "--state-dir", str(work / f"client-{i}"), "--partition", f"{i}/{args.clients}"],
                stdout=subprocess.DEVNULL, stderr=open(work / f"client-{i}.log", "w")))
        job = admin.submit_job(work / "job.toml")
        print(f"job {job}: {args.rounds} rounds, {args.clients} PyTorch clients (logs in {work})", flush=True)
        while (status := admin.job_status(job))["state"] not in flotilla.TERMINAL_STATES:
            for i, p in enumerate(procs):
                if p.poll() is not None:  # a dead client would stall every round: stop at once
                    raise SystemExit(f"a process exited ({p.args[1] if i else 'server'}); see the logs in {work}")
            time.sleep(0.5)
        if status["state"] != "completed":
            raise SystemExit(f"job {job} ended {status['state']}: {status.get('reason')}")
        wall = time.monotonic() - started
        model = admin.download_model(job)
        x_test, y_test = flotilla.load_test("mnist")
        trainer = TorchTrainer(x_test[:1], y_test[:1], x_test, y_test)
        loss, n, metrics = trainer.evaluate(model, {})
        fed = [r["metrics"].get("federated_eval") for r in status["history"]]
        result = {
            "clients": args.clients, "rounds": args.rounds, "local_epochs": args.epochs,
            "test_samples": n, "accuracy": metrics["accuracy"], "loss": loss, "wall_seconds": round(wall, 1),
            "num_params": int(sum(a.size for a in model.values())),
            "federated_eval_accuracy": [f and f.get("accuracy") for f in fed],
        }
        print(json.dumps(result))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        if metrics["accuracy"] < args.min_accuracy:
            print(f"error: accuracy {metrics['accuracy']:.4f} < {args.min_accuracy}", file=sys.stderr)
            return 1
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
