"""Run a Flower ``NumPyClient`` against a Flotilla coordinator, unchanged.

A ``NumPyClient`` works with a list of arrays; a Flotilla job names its tensors. The list is
mapped to the job's layout in order: entry ``i`` is the job's ``i``-th tensor, unless ``names``
gives the name of each entry. :func:`save_initial` writes a client's ``get_parameters`` as a job's
initial model with names (``p0000``, ``p0001``, …) whose order is the list's, so the default
mapping holds.

The Flower ``config`` a client receives holds the task's scalar settings (``round``,
``epochs``, ``batch_size``, ``learning_rate``, ``seed``, ``proximal_mu``, …). Metrics that are
not numbers (Flower allows ``str`` and ``bytes``) are not sent.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import Client, InvalidUpdate
from . import save_initial as _save_initial

__all__ = ["run_numpy_client", "NumPyClientTrainer", "save_initial", "list_names"]


def list_names(count: int) -> List[str]:
    """The names :func:`save_initial` gives a list of ``count`` arrays: ``p0000``, ``p0001``, …"""
    return [f"p{i:04d}" for i in range(count)]


def save_initial(client: Any, path: Union[str, "os.PathLike[str]"], config: Optional[dict] = None) -> None:
    """Writes ``client.get_parameters(config or {})`` as a job's initial model (safetensors), the
    arrays named by :func:`list_names` so that the job's layout order is the list's order."""
    arrays = client.get_parameters(config or {})
    params = {name: np.asarray(a) for name, a in zip(list_names(len(arrays)), arrays)}
    _save_initial(params, path)


def _scalars(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Flower's config: scalar values only (bool, bytes, float, int, str)."""
    return {k: v for k, v in config.items() if isinstance(v, (bool, bytes, float, int, str))}


def _numeric_metrics(metrics: Optional[Mapping[str, Any]], what: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    dropped = []
    for k, v in (metrics or {}).items():
        if isinstance(v, (bool, int, float, np.number)):
            out[k] = float(v)
        else:
            dropped.append(k)
    if dropped:
        warnings.warn(f"{what}: metrics {dropped} are not numbers and are not sent", stacklevel=3)
    return out


class NumPyClientTrainer:
    """A Flotilla trainer made of a Flower ``NumPyClient`` (see the module doc for the mapping)."""

    def __init__(self, client: Any, names: Optional[Sequence[str]] = None, num_samples: Optional[int] = None):
        self.client = client
        self.names = list(names) if names is not None else None
        self._num_samples = num_samples

    def num_samples(self) -> int:
        if self._num_samples is None:
            props = {}
            if hasattr(self.client, "get_properties"):
                try:
                    props = self.client.get_properties({}) or {}
                except Exception:  # Flower's default raises: no properties
                    props = {}
            self._num_samples = int(props.get("num_examples", 1))
        return self._num_samples

    def _to_list(self, params: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        if self.names is None:
            return list(params.values())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise InvalidUpdate(f"names lists tensor {missing[0]!r}, which the job's model does not have")
        return [params[n] for n in self.names]

    def _to_dict(self, arrays: Sequence[np.ndarray], layout: Sequence[str], what: str) -> Dict[str, np.ndarray]:
        names = self.names if self.names is not None else list(layout)
        if not isinstance(arrays, (list, tuple)):
            raise InvalidUpdate(f"{what} returned {type(arrays).__name__} for parameters; return a list of numpy arrays")
        if len(arrays) != len(names):
            raise InvalidUpdate(
                f"{what} returned {len(arrays)} arrays; the job's model has {len(names)} tensors ({', '.join(names[:8])})"
            )
        return dict(zip(names, arrays))

    def fit(self, params: Dict[str, np.ndarray], config: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], int, Dict[str, float]]:
        arrays, num_examples, metrics = self.client.fit(self._to_list(params), _scalars(config))
        self._num_samples = int(num_examples) if num_examples else self._num_samples
        return self._to_dict(arrays, list(params), "fit"), num_examples, _numeric_metrics(metrics, "fit")


class _EvaluatingTrainer(NumPyClientTrainer):
    def evaluate(self, params: Dict[str, np.ndarray], config: Dict[str, Any]) -> Tuple[float, int, Dict[str, float]]:
        loss, num_examples, metrics = self.client.evaluate(self._to_list(params), _scalars(config))
        return float(loss), num_examples, _numeric_metrics(metrics, "evaluate")


def _overrides_evaluate(client: Any) -> bool:
    """Whether the client's class defines ``evaluate`` itself (Flower's base class has a default)."""
    for klass in type(client).__mro__:
        if "evaluate" in vars(klass):
            return klass.__module__.split(".")[0] != "flwr"
    return False


def run_numpy_client(
    client: Any,
    coordinator: str,
    state_dir: Union[str, "os.PathLike[str]"],
    *,
    names: Optional[Sequence[str]] = None,
    num_samples: Optional[int] = None,
    **client_options: Any,
) -> dict:
    """Serves the coordinator with a Flower ``NumPyClient`` until Ctrl-C (see :class:`flotilla.Client`
    for ``client_options``: ``ca_cert``, ``token``, ``name``, ``jobs``, ``insecure``). Returns the
    run's counters."""
    kind = _EvaluatingTrainer if _overrides_evaluate(client) else NumPyClientTrainer
    trainer = kind(client, names=names, num_samples=num_samples)
    return Client(coordinator, os.fspath(state_dir), **client_options).run(trainer)
