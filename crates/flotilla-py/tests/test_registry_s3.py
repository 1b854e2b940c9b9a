"""Model artifacts in an S3-compatible object store, and their safetensors export read by Python.

`flotilla server --blob-url s3://BUCKET/flotilla` against a real S3-compatible server on loopback
(moto's, started here), a short digits job, then: the objects are in the bucket, the safetensors
download loads with Python's `safetensors` + numpy with exactly the raw model's values, names and
shapes, the values hash to the round's `model_sha256`, and all of it survives a coordinator
restart on the same bucket and database.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import flotilla
from conftest import BIN, ROOT, Federation, Proc, free_port

BUCKET = "flotilla-it"
#: The object keys' prefix inside the bucket (`s3://BUCKET/PREFIX`).
PREFIX = "flotilla"


def digits_job(name: str, extra: str = "") -> str:
    """Two clients, two rounds of logistic regression on digits: a few seconds."""
    return f"""
name = "{name}"
seed = 7
rounds = 2
clients_per_round = 2

[round]
min_clients = 2
over_selection = 1.0
deadline_seconds = 60
min_report_fraction = 1.0
retry_after_ms = 300

[model]
kind = "logreg"
dataset = "digits"

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
{extra}"""


class S3Server:
    """moto's S3-compatible server on a free loopback port, and a boto3 client for it."""

    def __init__(self, dir: Path):
        import boto3  # comes with moto[server]

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = Proc([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                         dir / "moto.log")
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.popen.poll() is None, f"moto_server exited: {self.proc.log.read_text()}"
            try:
                self.client.list_buckets()
                break
            except Exception:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)

    def keys(self, prefix: str) -> List[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def close(self) -> None:
        self.proc.kill()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path)
    try:
        server.client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_federation(tmp_path: Path, s3: S3Server) -> Iterator[Federation]:
    f = Federation(tmp_path, server_args=["--blob-url", f"s3://{BUCKET}/{PREFIX}"], server_env=s3.env)
    try:
        yield f
    finally:
        f.close()


def run_job(f: Federation, spec: str) -> Tuple[int, dict]:
    """Two Rust clients, the job to completion; its id and final status."""
    token = f.token(2)
    for i in range(2):
        f.rust_client(token, i, 2)
    job = f.admin.submit_job(spec)
    status = flotilla.wait_for_job(f.admin, job, timeout=300)
    assert status["state"] == "completed", status
    return job, status


def check_safetensors(path: Path, raw: bytes, tensors: List[dict], sha256: str) -> Dict[str, np.ndarray]:
    """The file loads with Python's safetensors; its tensors are the layout's (names, shapes, F32)
    and, concatenated in layout order as little-endian f32, are `raw` byte for byte, whose SHA-256
    is `sha256`."""
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(t["name"] for t in tensors)
    flat = []
    for t in tensors:
        value = loaded[t["name"]]
        assert value.dtype == np.float32, (t["name"], value.dtype)
        assert list(value.shape) == list(t["shape"]), (t["name"], value.shape, t["shape"])
        flat.append(value.astype("<f4").ravel())
    values = np.concatenate(flat)
    expected = np.frombuffer(raw, dtype="<f4")
    assert values.shape == expected.shape
    # Every value identical: compared as bits, so NaNs or signed zeros could not hide a difference.
    assert np.array_equal(values.view("<u4"), expected.view("<u4"))
    assert hashlib.sha256(values.tobytes()).hexdigest() == sha256
    return loaded


def test_artifacts_round_trip_through_an_s3_compatible_server(tmp_path: Path, s3: S3Server,
                                                              s3_federation: Federation):
    f = s3_federation
    job, status = run_job(f, digits_job("s3"))
    last = status["history"][-1]
    assert last["round"] == 2, status["history"]

    # The models are objects in the bucket, under the URL's prefix, and nowhere on local disk.
    keys = s3.keys(f"{PREFIX}/job-{job}/")
    # The two rounds' models (a built-in model's initial version is made, not stored).
    assert sorted(k.split("/")[-1].split("-")[0] for k in keys) == ["v1", "v2"], keys
    assert not (f.dir / "server" / "models" / f"job-{job}").exists()

    info = json.loads(f.get(f"/v1/jobs/{job}/model/info"))
    raw = f.get(f"/v1/jobs/{job}/model")
    sha = info["model_sha256"]
    assert hashlib.sha256(raw).hexdigest() == sha
    # The object's key names the SHA-256 of its bytes, and the bytes are the served model's.
    [key] = [k for k in keys if k.endswith(f"-{sha}.bin")]
    assert s3.get(key) == raw

    out = tmp_path / "model.safetensors"
    f.cli("job", "download", str(job), "--format", "safetensors", "--out", str(out))
    check_safetensors(out, raw, info["tensors"], sha)
    with safe_open(str(out), "np") as st:
        metadata = st.metadata()
    assert metadata["model_sha256"] == sha
    assert metadata["tensor_order"] == ",".join(t["name"] for t in info["tensors"])

    # A restart on the same bucket and database serves the same bytes from the bucket.
    f.stop_server()
    f.server = f.start_server()
    assert f.get(f"/v1/jobs/{job}/model") == raw
    again = tmp_path / "again.safetensors"
    f.cli("job", "download", str(job), "--format", "safetensors", "--out", str(again))
    check_safetensors(again, raw, info["tensors"], sha)


def test_the_server_refuses_s3_without_credentials_in_one_line(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run(
        [BIN, "server", "--data-dir", str(tmp_path / "server"), "--insecure",
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
         "--blob-url", f"s3://{BUCKET}/{PREFIX}"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        # Errors only: --insecure's warning is not the line under test.
        env={**env, "FLOTILLA_ADMIN_TOKEN": "t", "RUST_LOG": "error"},
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in lines[0], lines[0]
