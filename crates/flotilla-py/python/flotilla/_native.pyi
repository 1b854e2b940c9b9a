"""Type stubs of the compiled module ``flotilla._native`` (re-exported by ``flotilla``)."""

import os
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

Params = Dict[str, npt.NDArray[np.float32]]
PathLike = Union[str, "os.PathLike[str]"]

class FlotillaError(Exception):
    """A Flotilla operation failed; the message says what happened and what to do."""

class InvalidUpdate(ValueError):
    """What a trainer returned cannot be sent; the message names the tensor. Nothing was sent."""

class Trainer(Protocol):
    def num_samples(self) -> int: ...
    def fit(self, params: Params, config: Dict[str, Any]) -> Tuple[Mapping[str, np.ndarray], int, Optional[Mapping[str, float]]]: ...
    # Optional: def evaluate(self, params: Params, config: Dict[str, Any]) -> Tuple[float, int, Optional[Mapping[str, float]]]

class Client:
    """A Flotilla client: the Rust client SDK with a Python trainer."""

    def __init__(
        self,
        coordinator: str,
        state_dir: PathLike,
        *,
        ca_cert: Optional[PathLike] = None,
        token: Optional[str] = None,
        name: Optional[str] = None,
        jobs: Optional[Sequence[str]] = None,
        insecure: bool = False,
        attributes: Optional[Mapping[str, str]] = None,
        cohorts: Optional[Mapping[str, str]] = None,
    ) -> None: ...
    def run(self, trainer: Trainer) -> Dict[str, Any]:
        """Serves the coordinator until Ctrl-C, ``stop()`` or a fatal error; returns counters."""
    def stop(self) -> None: ...
    def pull_model(self, name: str) -> Tuple[int, bool, Params]:
        """The registered model's version this client is served: (version, canary, params)."""
    @property
    def client_id(self) -> Optional[str]: ...

class Admin:
    """The coordinator's admin API."""

    def __init__(
        self,
        url: str,
        *,
        ca_cert: Optional[PathLike] = None,
        token: Optional[str] = None,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None: ...
    def submit_job(self, spec: Union[str, "os.PathLike[str]"], *, initial: Optional[Union[bytes, PathLike]] = None) -> int: ...
    def job_status(self, job_id: int) -> Dict[str, Any]: ...
    def jobs(self) -> List[Dict[str, Any]]: ...
    def cancel_job(self, job_id: int) -> Dict[str, Any]: ...
    def create_token(self, *, tenant: Optional[str] = None, uses: int = 1, expires_in_seconds: Optional[int] = None) -> str: ...
    def download_model(self, job_id: int, *, round: Optional[int] = None) -> Params: ...

def simulate(
    scenario_toml: str,
    *,
    data_dir: Optional[PathLike] = None,
    rounds: Optional[int] = None,
    seed: Optional[int] = None,
) -> Dict[str, Any]:
    """Runs a scenario (TOML text); returns what ``flotilla sim --out`` writes."""

def _check_update(params: Mapping[str, np.ndarray], layout: List[Tuple[str, List[int]]]) -> None: ...
def _save_safetensors(params: Mapping[str, np.ndarray], path: str) -> None: ...
