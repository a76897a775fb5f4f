"""Optimiser and progress state for resuming a run, stored without pickle.

Adam's state is tensors keyed by parameter index plus a few numbers; it goes to a safetensors
file with the progress (epoch, step, best metric, history) as JSON metadata, written atomically
next to the last model checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_save

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ModelFileError

_KEY = "napari_msunet_train_state"


def save_state(path: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> Path:
    """Write the optimiser state and ``progress`` (JSON-serialisable) to ``path`` atomically."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "progress": progress}
    data = safetensors_save(tensors, metadata={_KEY: json.dumps(meta)})
    return atomic_write_bytes(path, data, overwrite=True)


def load_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimiser from ``path`` and return the saved progress."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[_KEY])
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelFileError(path, f"is not a readable training state: {exc}") from exc
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise ModelFileError(path, f"does not match this model's optimiser: {exc}") from exc
    return meta["progress"]
