"""Serialisation of recommenders and training state: safetensors for tensors,
JSON for everything else, never pickles; every file is written atomically.

``save_checkpoint(model, dir)`` writes ``dir/model.safetensors`` +
``dir/config.json``; ``load_model(dir)`` rebuilds the model from them without
the training data (GNN keeps its graph in buffers).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.recommenders import restore_model
from models.recommenders.base import SequentialRecommender, resolve_device

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or belongs to a different run."""


def flatten_optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str = "optim."
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state as flat tensors plus JSON-able metadata (no pickles)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    prefix: str = "optim.",
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def encode_bytes(t: Tensor) -> str:
    """A uint8 tensor (an RNG state) as base64 text for JSON."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def decode_bytes(s: str) -> Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": encode_bytes(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(decode_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode_bytes(s) for s in state["cuda"]])


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cpu_tensors(d: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    # clone: safetensors refuses tensors that share storage
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in d.items()}


def split_tensors(state: dict[str, Any], prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {prefix + k: v for k, v in state.items() if isinstance(v, Tensor)}
    other = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    return tensors, other


def strip_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------
# final artefact
# ---------------------------------------------------------------------------


def save_checkpoint(model: SequentialRecommender, path: str | Path) -> Path:
    """Write ``path/model.safetensors`` + ``path/config.json`` (atomically, each)."""
    path = Path(path)
    meta = {
        "format_version": CHECKPOINT_VERSION,
        "model": model.name,
        "num_items": model.num_items,
        "config": model.config.as_dict(),
    }
    tensors = cpu_tensors(model.state_dict(), "")
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SequentialRecommender:
    """Rebuild a model written by :func:`save_checkpoint` (eval mode)."""
    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{path} does not hold config.json and model.safetensors")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{cfg_file}: unsupported format_version {meta.get('format_version')!r}"
        )
    model = restore_model(meta["model"], int(meta["num_items"]), meta["config"])
    model.load_state_dict(load_file(weights), strict=True)
    return model.to(resolve_device(device)).eval()


__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write",
    "cpu_tensors",
    "decode_bytes",
    "encode_bytes",
    "flatten_optimizer_state",
    "load_model",
    "load_optimizer_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "split_tensors",
    "strip_prefix",
]
