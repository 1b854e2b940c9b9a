"""Flotilla from Python: federated learning with your own model and data.

- :class:`Client` joins a federation with any trainer that has ``num_samples()``,
  ``fit(params, config) -> (params, num_samples, metrics)`` and optionally
  ``evaluate(params, config) -> (loss, num_samples, metrics)``; ``params`` is a
  ``dict[str, numpy.ndarray]`` of float32 tensors named as the job's model. The Rust client SDK
  runs underneath: enrollment, resumable transfers, SecAgg+, distributed DP, retries.
- :class:`Admin` submits and follows jobs on a coordinator and downloads trained models.
- :func:`simulate` runs a scenario in the deterministic simulator (same results as
  ``flotilla sim --out``).
- :mod:`flotilla.torch` converts between a PyTorch ``nn.Module`` and ``params``;
  :mod:`flotilla.flower` runs a Flower ``NumPyClient`` unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Union
import os

import numpy as np

from ._native import (
    Admin,
    Client,
    FlotillaError,
    InvalidUpdate,
    __version__,
    _check_update,
    _save_safetensors,
    load_partition,
    load_test,
    simulate,
)

__all__ = [
    "Admin",
    "Client",
    "FlotillaError",
    "InvalidUpdate",
    "check_update",
    "load_partition",
    "load_test",
    "save_initial",
    "simulate",
    "wait_for_job",
    "__version__",
]

#: Job states after which nothing changes.
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


def wait_for_job(admin: Admin, job_id: int, *, timeout: float = 600.0, poll: float = 0.5) -> Dict[str, Any]:
    """Polls ``admin.job_status(job_id)`` until the job is completed, failed or cancelled, and
    returns that status. Raises ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = admin.job_status(job_id)
        if status.get("state") in TERMINAL_STATES:
            return status
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"job {job_id} is still {status.get('state')} after {timeout:.0f} s "
                f"({status.get('rounds_completed')}/{status.get('rounds_total')} rounds)"
            )
        time.sleep(poll)


def check_update(params: Mapping[str, np.ndarray], layout: Mapping[str, tuple]) -> None:
    """Checks ``params`` as ``Client.run`` checks what ``fit`` returns: the names of ``layout``
    (``{name: shape}``), float32, those shapes, finite. Raises :class:`InvalidUpdate` naming the
    tensor."""
    _check_update(dict(params), [(name, list(shape)) for name, shape in layout.items()])


def save_initial(params: Mapping[str, np.ndarray], path: Union[str, "os.PathLike[str]"]) -> None:
    """Writes ``params`` (``{name: float32 array}``) as a safetensors file, the initial model of a
    job with ``[model] initial = "<file>"``. Refuses (``InvalidUpdate``, naming the tensor) other
    dtypes, empty tensors and non-finite values — what the coordinator would refuse. The job's
    layout order is the file's: tensors sorted by name."""
    _save_safetensors(dict(params), os.fspath(path))
