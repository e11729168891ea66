"""Saving and loading a trained regenerator: safetensors weights + JSON config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.config import RegeneratorConfig
from models.regenerator.model import Regenerator, RegeneratorInputError, resolve_device

_WEIGHTS, _META = "regenerator.safetensors", "regenerator.json"


def save_regenerator(model: Regenerator, directory: str | Path) -> Path:
    """Write weights (safetensors) and config (JSON) into ``directory``; the JSON
    is written last, so a directory with it holds a complete checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{_WEIGHTS}.tmp"
    save_file(state, str(tmp))
    tmp.replace(directory / _WEIGHTS)
    meta = {"format": 1, "num_items": model.num_items, "config": model.config.to_dict()}
    tmp = directory / f".{_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / _META)
    return directory


def load_regenerator(directory: str | Path, device: str | torch.device | None = None) -> Regenerator:
    """Rebuild a saved regenerator (eval mode) on ``device`` (default: config.device)."""
    directory = Path(directory)
    if not (directory / _META).exists() or not (directory / _WEIGHTS).exists():
        raise RegeneratorInputError(f"{directory} holds no regenerator checkpoint")
    meta = json.loads((directory / _META).read_text())
    if meta.get("format") != 1:
        raise RegeneratorInputError(f"unsupported regenerator checkpoint format {meta.get('format')!r}")
    config = RegeneratorConfig.model_validate(meta["config"])
    model = Regenerator(meta["num_items"], config)
    state = load_file(str(directory / _WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RegeneratorInputError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    target = resolve_device(config.device) if device is None else torch.device(device)
    return model.to(target).eval()
