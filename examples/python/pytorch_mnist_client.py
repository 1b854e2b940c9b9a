#!/usr/bin/env python3
"""A Flotilla client with a PyTorch model: a small CNN on its share of MNIST-10k.

The model is an ordinary ``nn.Module``; ``flotilla.torch`` moves its ``state_dict`` in and out of
Flotilla's named parameters, so the job's model is whatever this file defines: the coordinator
knows only its tensor names and shapes, from the initial model file (``--write-initial``).

A whole federation (coordinator, 5 of these clients, the job, the trained model's accuracy) is
``scripts/pytorch_mnist.py``. By hand, from the repository root, after ``cargo build --release``,
``pip install torch ./crates/flotilla-py`` and ``flotilla data fetch mnist``:

    python examples/python/pytorch_mnist_client.py --write-initial fl/init.safetensors
    # a job file with [model] initial = "init.safetensors" beside it; submit it with
    # flotilla job submit, then start clients:
    python examples/python/pytorch_mnist_client.py --coordinator https://127.0.0.1:7070 \\
        --ca-cert fl/certs/ca.pem --token "$TOKEN" --state-dir fl/torch-0 --partition 0/5
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import flotilla
import flotilla.torch as ft


class Net(nn.Module):
    """Two 3×3 convolutions with max-pooling, then two linear layers (~56k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class TorchTrainer:
    """``fit`` and ``evaluate`` of a PyTorch module on local tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
        self.net = Net()
        self.x, self.y = torch.from_numpy(x).reshape(-1, 1, 28, 28), torch.from_numpy(y)
        self.x_test, self.y_test = torch.from_numpy(x_test).reshape(-1, 1, 28, 28), torch.from_numpy(y_test)

    def num_samples(self) -> int:
        return len(self.y)

    def fit(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        ft.load_params(self.net, params)
        torch.manual_seed(config["seed"] % (2**63))
        opt = torch.optim.SGD(self.net.parameters(), lr=config["learning_rate"], momentum=0.9)
        self.net.train()
        losses = []
        for _ in range(config["epochs"]):
            for idx in torch.randperm(len(self.y)).split(config["batch_size"]):
                opt.zero_grad()
                loss = F.cross_entropy(self.net(self.x[idx]), self.y[idx])
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return ft.params_from_module(self.net), len(self.y), {"train_loss": float(np.mean(losses))}

    @torch.no_grad()
    def evaluate(self, params: Dict[str, np.ndarray], config: Dict[str, Any]):
        ft.load_params(self.net, params)
        self.net.eval()
        logits = self.net(self.x_test)
        loss = F.cross_entropy(logits, self.y_test).item()
        accuracy = (logits.argmax(1) == self.y_test).float().mean().item()
        return loss, len(self.y_test), {"accuracy": accuracy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-initial", metavar="FILE", help="write the model's initial parameters and exit")
    ap.add_argument("--coordinator")
    ap.add_argument("--ca-cert")
    ap.add_argument("--token")
    ap.add_argument("--state-dir")
    ap.add_argument("--partition", default="0/1", help="I/N: this client's share of MNIST-10k")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # several clients share the machine's cores
    if args.write_initial:
        torch.manual_seed(0)
        ft.save_initial(Net(), args.write_initial)
        return 0
    index, of = (int(v) for v in args.partition.split("/"))
    x, y = flotilla.load_partition("mnist", index, of, data_dir=args.data_dir)
    x_test, y_test = flotilla.load_test("mnist", data_dir=args.data_dir)
    trainer = TorchTrainer(x, y, x_test[index::of], y_test[index::of])
    stats = flotilla.Client(args.coordinator, args.state_dir, ca_cert=args.ca_cert, token=args.token,
                            name=f"torch-{index}").run(trainer)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
