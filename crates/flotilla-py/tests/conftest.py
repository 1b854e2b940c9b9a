"""Shared harness of the Python SDK's tests: real `flotilla server` processes over TLS (certificates
from `flotilla dev-certs`), Rust `flotilla client` processes and Python client processes.

The binary is `$FLOTILLA` (default `target/release/flotilla` of this checkout); `.ci/run` builds it
before the wheel (`scripts/python_sdk_test.sh`).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, List, Optional

import pytest

import flotilla

ROOT = Path(__file__).resolve().parents[3]
#: RUST_LOG of every process started here (`FLOTILLA_TEST_LOG=info` to debug a failing test).
LOG = os.environ.get("FLOTILLA_TEST_LOG", "warn")
BIN = os.environ.get("FLOTILLA", str(ROOT / "target" / "release" / "flotilla"))
EXAMPLE = ROOT / "examples" / "python" / "numpy_logreg_client.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stderr goes to a log file, optionally watched line by line."""

    def __init__(self, args: List[str], log: Path, env: Optional[dict] = None,
                 on_line: Optional[Callable[["Proc", str], None]] = None):
        self.log = log
        self.args = args
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, cwd=ROOT,
        )
        self.stdout = ""
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._read_err, args=(on_line,), daemon=True)
        self._err.start()

    def _read_out(self) -> None:
        self.stdout = self.popen.stdout.read()

    def _read_err(self, on_line) -> None:
        with open(self.log, "w") as f:
            for line in self.popen.stderr:
                f.write(line)
                f.flush()
                if on_line:
                    on_line(self, line)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        rc = self.popen.wait(timeout=timeout)
        self._out.join(timeout=5)
        self._err.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.wait(5)
        except Exception:
            pass


class Federation:
    """A coordinator in `dir` and the clients started for it; everything is killed at teardown."""

    ADMIN_TOKEN = "py-admin-" + secrets.token_hex(8)

    def __init__(self, dir: Path, server_args: Optional[List[str]] = None, server_env: Optional[dict] = None):
        self.dir = dir
        self.grpc, self.admin_port = free_port(), free_port()
        subprocess.run([BIN, "dev-certs", str(dir / "certs")], check=True, capture_output=True)
        self.ca = str(dir / "certs" / "ca.pem")
        self.procs: List[Proc] = []
        #: Extra `flotilla server` arguments and environment (a blob store URL and its credentials).
        self.server_args, self.server_env = server_args or [], server_env or {}
        self.starts = 0
        self.server = self.start_server()
        self.admin = flotilla.Admin(f"https://127.0.0.1:{self.admin_port}", ca_cert=self.ca, token=self.ADMIN_TOKEN)
        self.coordinator = f"https://127.0.0.1:{self.grpc}"

    def server_command(self, ready: Path) -> List[str]:
        return [BIN, "server", "--data-dir", str(self.dir / "server"),
                "--listen", f"127.0.0.1:{self.grpc}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--tls-cert", str(self.dir / "certs" / "server.pem"),
                "--tls-key", str(self.dir / "certs" / "server-key.pem"),
                "--ready-file", str(ready), *self.server_args]

    def start_server(self) -> Proc:
        """Starts the coordinator (again, after `stop_server`: same data, ports and blob store) and
        waits until it is ready."""
        self.starts += 1
        ready = self.dir / f"server-{self.starts}.ready"
        server = self.spawn(
            self.server_command(ready), "server" if self.starts == 1 else f"server-{self.starts}",
            env={"FLOTILLA_ADMIN_TOKEN": self.ADMIN_TOKEN, "RUST_LOG": LOG, **self.server_env},
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.popen.poll() is None, f"the server exited: {server.log.read_text()}"
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        return server

    def stop_server(self) -> None:
        """SIGTERM to the coordinator; waits for it to exit."""
        self.server.signal(signal.SIGTERM)
        self.server.wait(30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`flotilla ARGS… --admin-url … --ca-cert …` with the admin token in the environment."""
        done = subprocess.run(
            [BIN, *args, "--admin-url", f"https://127.0.0.1:{self.admin_port}", "--ca-cert", self.ca],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, "FLOTILLA_ADMIN_TOKEN": self.ADMIN_TOKEN, "RUST_LOG": LOG},
        )
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def get(self, path: str) -> bytes:
        """GET an admin API path (over TLS, verified against the federation's CA), the raw body."""
        ctx = ssl.create_default_context(cafile=self.ca)
        req = urllib.request.Request(f"https://127.0.0.1:{self.admin_port}{path}",
                                     headers={"Authorization": f"Bearer {self.ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
            return r.read()

    def spawn(self, args: List[str], name: str, env: Optional[dict] = None, on_line=None) -> Proc:
        p = Proc(args, self.dir / f"{name}.log", env=env, on_line=on_line)
        self.procs.append(p)
        return p

    def token(self, uses: int) -> str:
        return self.admin.create_token(uses=uses)

    def rust_client(self, token: str, index: int, of: int, env: Optional[dict] = None, on_line=None) -> Proc:
        return self.spawn(
            [BIN, "client", "--coordinator", self.coordinator, "--ca-cert", self.ca, "--token", token,
             "--name", f"rust-{index}", "--state-dir", str(self.dir / f"rust-{index}"),
             "--dataset", "digits", "--partition", f"{index}/{of}"],
            f"rust-{index}", env={"RUST_LOG": LOG, **(env or {})}, on_line=on_line,
        )

    def python_client(self, token: str, index: int, of: int, script: Path = EXAMPLE, extra: Optional[List[str]] = None,
                      env: Optional[dict] = None, on_line=None) -> Proc:
        return self.spawn(
            [sys.executable, str(script), "--coordinator", self.coordinator, "--ca-cert", self.ca, "--token", token,
             "--state-dir", str(self.dir / f"py-{index}"), "--partition", f"{index}/{of}", *(extra or [])],
            f"py-{index}", env={"RUST_LOG": LOG, **(env or {})}, on_line=on_line,
        )

    def close(self) -> None:
        for p in self.procs:
            p.signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except Exception:
                p.kill()


@pytest.fixture
def federation(tmp_path: Path):
    f = Federation(tmp_path)
    try:
        yield f
    finally:
        f.close()
