"""The five target recommenders (spec §6.2) and the registry that builds them.

``build_model("sasrec", num_items, {"dropout_rate": 0.3}, train=rows)`` returns a
:class:`SequentialRecommender`. ``ctx`` carries data a model may need at
construction (GNN: ``train=`` the current training rows for its item graph);
models that need nothing ignore it.
"""

from __future__ import annotations

from typing import Any

from models.recommenders.base import (
    ModelConfigError,
    PositionLoss,
    RecommenderConfig,
    SequentialRecommender,
    init_weights,
)
from models.recommenders.cl4srec import CL4SRec, CL4SRecConfig
from models.recommenders.fmlp import FMLPConfig, FMLPRec
from models.recommenders.gnn import GNN, GNNConfig
from models.recommenders.gru4rec import GRU4Rec, GRU4RecConfig
from models.recommenders.sasrec import SASRec, SASRecConfig

MODELS: dict[str, type[SequentialRecommender]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "fmlp": FMLPRec,
    "gnn": GNN,
    "cl4srec": CL4SRec,
}


def model_class(name: str) -> type[SequentialRecommender]:
    try:
        return MODELS[name.lower()]
    except (KeyError, AttributeError):
        raise ModelConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None


def make_config(name: str, config_overrides: dict[str, Any] | None = None) -> RecommenderConfig:
    """The model's config dataclass: spec defaults with ``config_overrides`` applied."""
    return model_class(name).config_class.from_overrides(config_overrides)


def build_model(
    name: str, num_items: int, config_overrides: dict[str, Any] | None = None, **ctx: Any
) -> SequentialRecommender:
    cls = model_class(name)
    return cls(num_items, cls.config_class.from_overrides(config_overrides), **ctx)


def restore_model(name: str, num_items: int, config: dict[str, Any]) -> SequentialRecommender:
    """An untrained model shaped to receive a saved state dict (no training data needed)."""
    cls = model_class(name)
    cfg = cls.config_class.from_overrides(config)
    factory = getattr(cls, "for_restore", None)
    return factory(num_items, cfg) if factory is not None else cls(num_items, cfg)


__all__ = [
    "CL4SRec",
    "CL4SRecConfig",
    "FMLPConfig",
    "FMLPRec",
    "GNN",
    "GNNConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "MODELS",
    "ModelConfigError",
    "PositionLoss",
    "RecommenderConfig",
    "SASRec",
    "SASRecConfig",
    "SequentialRecommender",
    "build_model",
    "init_weights",
    "make_config",
    "model_class",
    "restore_model",
]
