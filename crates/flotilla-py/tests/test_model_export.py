"""The safetensors export of a trained model, read by Python's `safetensors` + numpy, holds exactly
the model's values: compared bit for bit with the artifact in the coordinator's local blob store
(the default, `--data-dir`'s `models/`) and with the admin API's raw download."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from conftest import Federation
from test_registry_s3 import check_safetensors, digits_job, run_job


def test_safetensors_download_loads_in_python_with_identical_values(tmp_path: Path, federation: Federation):
    f = federation
    job, status = run_job(f, digits_job("export"))
    info = json.loads(f.get(f"/v1/jobs/{job}/model/info"))
    sha = info["model_sha256"]
    assert info["round"] == status["history"][-1]["round"] == 2

    # The artifact as the coordinator stored it, read from disk, not through the coordinator.
    [blob] = (f.dir / "server" / "models" / f"job-{job}").glob(f"v*-{sha}.bin")
    stored = blob.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == sha
    assert f.get(f"/v1/jobs/{job}/model") == stored

    out = tmp_path / "digits.safetensors"
    f.cli("job", "download", str(job), "--format", "safetensors", "--out", str(out))
    loaded = check_safetensors(out, stored, info["tensors"], sha)
    # A trained model, not zeros: the comparison above had something to compare.
    assert all(np.any(v != 0) for v in loaded.values() if v.size > 10)
    with safe_open(str(out), "np") as st:
        assert st.metadata()["tensor_order"] == ",".join(t["name"] for t in info["tensors"])

    # The raw format is the stored artifact byte for byte.
    raw = tmp_path / "digits.bin"
    f.cli("job", "download", str(job), "--format", "raw", "--out", str(raw))
    assert raw.read_bytes() == stored
