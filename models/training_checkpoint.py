"""A training run's resumable state and its per-epoch checkpoint: the
``last.safetensors`` / ``last.json`` pair that :func:`models.training.train_model`
writes after every epoch and reads back with ``resume=True``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.config import TrainConfig
from models.recommenders.base import SequentialRecommender
from models.recommenders.serialization import (
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_write,
    cpu_tensors,
    flatten_optimizer_state,
    rng_state,
    split_tensors,
)

# settings a resumed run must share with the run it continues
_RESUME_KEYS = (
    "model",
    "model_overrides",
    "batch_size",
    "lr",
    "weight_decay",
    "loss",
    "seed",
    "max_len",
    "bucket_chunk",
)


@dataclass
class _RunState:
    epoch: int = 0  # next epoch to run
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def _stateful(hook: Any) -> bool:
    return (
        hook is not None
        and callable(getattr(hook, "state_dict", None))
        and callable(getattr(hook, "load_state_dict", None))
    )


def _write_run_checkpoint(
    directory: Path,
    config: TrainConfig,
    num_items: int,
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, Tensor] | None,
    run: _RunState,
    hooks: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    tensors = cpu_tensors(model.state_dict(), "model.")
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer)
    tensors.update(cpu_tensors(opt_tensors, ""))
    if best_state is not None:
        tensors.update(cpu_tensors(best_state, "best."))
    hook_meta = {}
    for name, hook in hooks.items():
        t, other = split_tensors(dict(hook.state_dict()), f"hook.{name}.")
        tensors.update(cpu_tensors(t, ""))
        hook_meta[name] = other
    meta = {
        "format_version": CHECKPOINT_VERSION,
        "model": model.name,
        "num_items": num_items,
        "model_config": model.config.as_dict(),
        "train_config": config.as_dict(),
        "run": dataclasses.asdict(run),
        "optimizer": opt_meta,
        "rng": rng_state(),
        "hooks": hook_meta,
        **(extra or {}),
    }
    text = json.dumps(meta)
    # the epoch in the tensor file's metadata pairs it with its JSON
    atomic_write(
        directory / "last.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"epoch": str(run.epoch)}),
    )
    atomic_write(directory / "last.json", lambda tmp: Path(tmp).write_text(text))


def _read_run_checkpoint(directory: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    tensor_file, json_file = directory / "last.safetensors", directory / "last.json"
    if not tensor_file.exists() and not json_file.exists():
        return None
    if not tensor_file.is_file() or not json_file.is_file():
        raise CheckpointError(f"{directory}: last.safetensors and last.json must both exist")
    meta = json.loads(json_file.read_text())
    with safe_open(str(tensor_file), framework="pt") as f:
        stored_epoch = (f.metadata() or {}).get("epoch")
    if stored_epoch != str(meta["run"]["epoch"]):
        raise CheckpointError(
            f"{directory}: tensors (epoch {stored_epoch}) and JSON (epoch {meta['run']['epoch']}) disagree"
        )
    return load_file(tensor_file), meta


def _check_resumable(meta: dict[str, Any], config: TrainConfig, num_items: int) -> None:
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format_version {meta.get('format_version')!r}"
        )
    if int(meta["num_items"]) != num_items:
        raise CheckpointError(f"checkpoint has num_items {meta['num_items']}, this run {num_items}")
    saved = meta["train_config"]
    current = config.as_dict()
    for key in _RESUME_KEYS:
        if saved.get(key) != current.get(key):
            raise CheckpointError(
                f"checkpoint was trained with {key}={saved.get(key)!r}, this run has {current.get(key)!r}"
            )
