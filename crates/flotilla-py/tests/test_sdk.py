"""The Python SDK without a coordinator: checks of what a trainer returns, initial model files,
the simulator (bit-identical to the CLI), the PyTorch and Flower helpers, argument errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import flotilla
import flotilla.flower
from conftest import BIN, ROOT

LAYOUT = {"fc.weight": (3, 2), "fc.bias": (2,)}


def good():
    return {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(2, np.float32)}


def test_a_valid_update_passes_and_views_are_read_in_place():
    p = good()
    p["fc.weight"] = np.ones((2, 3), np.float32).T  # not contiguous: read in C order
    flotilla.check_update(p, LAYOUT)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["fc.bias"].__setitem__(1, np.nan), 'tensor "fc.bias" from fit has a non-finite value (NaN) at flat index 1'),
        (lambda p: p["fc.bias"].__setitem__(0, np.inf), 'tensor "fc.bias" from fit has a non-finite value (inf) at flat index 0'),
        (lambda p: p.__setitem__("fc.weight", np.ones((2, 3), np.float32)), 'tensor "fc.weight" from fit has shape [2, 3]; the job\'s model has [3, 2]'),
        (lambda p: p.__setitem__("fc.weight", np.ones((3, 2))), 'tensor "fc.weight" from fit has dtype float64; return float32'),
        (lambda p: p.pop("fc.bias"), 'fit returned no tensor "fc.bias" (shape [2])'),
        (lambda p: p.__setitem__("extra", np.ones(1, np.float32)), 'fit returned tensor "extra", which the job\'s model does not have'),
        (lambda p: p.__setitem__("fc.bias", [0.0, 0.0]), 'tensor "fc.bias" from fit is a list, not a numpy.ndarray'),
    ],
)
def test_bad_updates_name_the_tensor(change, message):
    p = good()
    change(p)
    with pytest.raises(flotilla.InvalidUpdate) as e:
        flotilla.check_update(p, LAYOUT)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_save_initial_writes_safetensors_sorted_by_name_and_refuses_bad_tensors(tmp_path: Path):
    path = tmp_path / "init.safetensors"
    flotilla.save_initial({"z": np.ones((2, 2), np.float32), "a": np.zeros(3, np.float32)}, path)
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["a"]["dtype"] == "F32" and header["z"]["shape"] == [2, 2]
    assert header["a"]["data_offsets"][0] < header["z"]["data_offsets"][0]
    for params, message in [
        ({"w": np.ones(2)}, 'tensor "w" has dtype float64'),
        ({"w": np.ones(0, np.float32)}, 'tensor "w" is empty'),
        ({"w": np.array([1, np.nan], np.float32)}, 'tensor "w" has a non-finite value (NaN) at flat index 1'),
        ({}, "no tensors"),
    ]:
        with pytest.raises(flotilla.InvalidUpdate, match="model.initial") as e:
            flotilla.save_initial(params, tmp_path / "bad.safetensors")
        assert message in str(e.value)


def test_simulate_returns_what_the_cli_writes(tmp_path: Path):
    text = (ROOT / "examples" / "digits.toml").read_text()
    got = flotilla.simulate(text, rounds=5)
    out = tmp_path / "r.json"
    subprocess.run([BIN, "sim", str(ROOT / "examples" / "digits.toml"), "--rounds", "5", "-q", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    cli = json.loads(out.read_text())
    timing = {"wall_seconds", "seconds_per_round", "peak_rss_bytes", "plot", "scenario_file"}
    assert set(got) == set(cli)
    assert got["model_sha256"] == cli["model_sha256"] and got["final_accuracy"] == cli["final_accuracy"]
    for doc in (got, cli):
        for record in doc["history"]:
            record.pop("elapsed_seconds")
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in cli.items() if k not in timing}


def test_simulate_names_the_bad_key():
    with pytest.raises(ValueError, match="clients_per_round"):
        flotilla.simulate((ROOT / "examples" / "digits.toml").read_text().replace("clients_per_round = 10", "clients_per_round = 0"))


def test_partitions_are_disjoint_and_cover_the_training_split():
    parts = [flotilla.load_partition("digits", i, 3) for i in range(3)]
    x0, y0 = parts[0]
    assert x0.dtype == np.float32 and x0.shape[1:] == (64,) and y0.dtype == np.int64
    sizes = [len(y) for _, y in parts]
    assert sum(sizes) == len(flotilla.load_partition("digits", 0, 1)[1])
    with pytest.raises(flotilla.FlotillaError, match="partition index 3 is out of range"):
        flotilla.load_partition("digits", 3, 3)


def test_client_and_admin_arguments_fail_early_and_clearly(tmp_path: Path):
    with pytest.raises(flotilla.FlotillaError, match="insecure"):
        flotilla.Client("http://127.0.0.1:1", tmp_path)
    with pytest.raises(ValueError, match="FLOTILLA_ADMIN_TOKEN"):
        flotilla.Admin("https://127.0.0.1:1", ca_cert=tmp_path / "ca.pem", token="")
    with pytest.raises(ValueError, match="insecure=True"):
        flotilla.Admin("http://127.0.0.1:1", token="t")


class FlowerStyle:
    def __init__(self):
        self.w, self.b = np.ones((3, 2), np.float32), np.zeros(2, np.float32)

    def get_parameters(self, config):
        return [self.w, self.b]

    def fit(self, parameters, config):
        assert all(isinstance(v, (bool, bytes, float, int, str)) for v in config.values())
        return [p + 1 for p in parameters], 5, {"loss": 0.5, "note": "text"}


def test_the_flower_adapter_maps_lists_to_layout_order(tmp_path: Path):
    client = FlowerStyle()
    flotilla.flower.save_initial(client, tmp_path / "init.safetensors")
    trainer = flotilla.flower.NumPyClientTrainer(client)
    params = {"p0000": np.zeros((3, 2), np.float32), "p0001": np.zeros(2, np.float32)}
    with pytest.warns(UserWarning, match="note"):
        out, n, metrics = trainer.fit(params, {"round": 1, "scaffold_correction": None, "model": None})
    assert n == 5 and metrics == {"loss": 0.5} and list(out) == ["p0000", "p0001"]
    assert (out["p0000"] == 1).all() and not hasattr(trainer, "evaluate")
    flotilla.check_update(out, {"p0000": (3, 2), "p0001": (2,)})


def test_torch_helpers_round_trip_a_module(tmp_path: Path):
    torch = pytest.importorskip("torch")
    import flotilla.torch as ft

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    params = ft.params_from_module(net)
    assert "1.num_batches_tracked" not in params and params["0.weight"].dtype == np.float32
    params = {k: v + 1 for k, v in params.items()}
    ft.load_params(net, params)
    assert torch.equal(net[0].weight, torch.from_numpy(params["0.weight"]))
    with pytest.raises(KeyError, match="nope"):
        ft.load_params(net, {**params, "nope": np.ones(1, np.float32)})
    ft.save_initial(net, tmp_path / "init.safetensors")
