"""README block (c) runs as written: a fresh venv, the package installed with pip from the
checkout, and a federation of five Rust and five Python clients (examples/federation.sh)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from conftest import BIN, ROOT


def marked_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no ```sh block after {marker}"
    return m.group(1)


def test_readme_python_block_runs_as_written():
    block = marked_block("<!-- test: python -->")
    shutil.rmtree(ROOT / ".venv", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    # The PATH without this test's venv: `python3` is the machine's, as for a new user.
    venv_bin = os.path.dirname(os.path.realpath(os.sys.executable))
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if os.path.realpath(p) != venv_bin)
    env["FLOTILLA"] = BIN
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    assert "started 10 clients, 5 of them Python" in out.stdout, out.stdout
    assert re.search(r"^federation finished: job \d+ completed", out.stdout, re.M), out.stdout
    assert (ROOT / "fl" / "model.safetensors").exists()
