"""PyTorch helpers: a ``nn.Module``'s ``state_dict`` as Flotilla ``params`` and back, by name.

Only floating-point entries of the state dict take part (weights, biases, and float buffers such
as BatchNorm running statistics); integer buffers such as ``num_batches_tracked`` stay local.
Conversions share memory where PyTorch and numpy allow (CPU float32 tensors): no copies.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import numpy as np

from . import save_initial as _save_initial

try:  # imported lazily so that `import flotilla` works without PyTorch
    import torch as _torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("flotilla.torch needs PyTorch: pip install torch") from e

__all__ = ["params_from_module", "load_params", "save_initial"]


def params_from_module(module: "_torch.nn.Module") -> Dict[str, np.ndarray]:
    """The module's floating-point state as ``{name: float32 numpy array}`` (views of CPU float32
    tensors, copies otherwise)."""
    out: Dict[str, np.ndarray] = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        out[name] = tensor.detach().to("cpu", _torch.float32).contiguous().numpy()
    return out


def load_params(module: "_torch.nn.Module", params: Mapping[str, np.ndarray]) -> None:
    """Copies ``params`` into the module's state, by name. Raises ``KeyError`` naming a tensor of
    ``params`` the module does not have, or a floating-point tensor of the module ``params``
    lacks."""
    state = module.state_dict()
    floating = {k for k, v in state.items() if v.is_floating_point()}
    unknown = sorted(set(params) - set(state))
    if unknown:
        raise KeyError(f"the module has no tensor {unknown[0]!r} (params name {len(unknown)} unknown tensors)")
    missing = sorted(floating - set(params))
    if missing:
        raise KeyError(f"params lack the module's tensor {missing[0]!r} ({len(missing)} missing)")
    with _torch.no_grad():
        for name, array in params.items():
            target = state[name]
            target.copy_(_torch.from_numpy(np.asarray(array)).to(target.dtype))


def save_initial(module: "_torch.nn.Module", path: Union[str, "os.PathLike[str]"]) -> None:
    """Writes the module's floating-point state as the safetensors initial model of a job
    (``[model] initial``)."""
    _save_initial(params_from_module(module), path)
