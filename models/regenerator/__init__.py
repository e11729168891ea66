"""The DR4SR regenerator (spec §4-§5), one concern per module:

* :mod:`~models.regenerator.model`: :class:`Regenerator`, the seq2seq
  Transformer with K memories and its training objective ``losses``;
* :mod:`~models.regenerator.layers`: attention, encoder and decoder layers
  (nn.Transformer semantics) and the CPU dropout they use;
* :mod:`~models.regenerator.packing`: the packed token layout of a batch;
* :mod:`~models.regenerator.data`: pair checks, token rows, :class:`PairBatches`;
* :mod:`~models.regenerator.training`: :func:`train_regenerator`;
* :mod:`~models.regenerator.persistence`: :func:`save_regenerator`, :func:`load_regenerator`.

Hyper-parameters live in :class:`models.config.RegeneratorConfig`; batched
decoding is :mod:`models.decoding`. Speed figures of the training step:
``benchmarks/regenerator_train.py`` and ``benchmarks/results/``.
"""

from models.config import RegeneratorConfig
from models.regenerator.data import PairBatches, check_pairs, wrap_tokens
from models.regenerator.layers import (
    Attention,
    DecoderLayer,
    Dropout,
    EncoderLayer,
    dropout,
    dropout_mask,
    key_bias,
    use_native_dropout,
)
from models.regenerator.model import NoiseRows, Regenerator, RegeneratorInputError, resolve_device
from models.regenerator.packing import Grid, Layout
from models.regenerator.persistence import load_regenerator, save_regenerator
from models.regenerator.training import train_regenerator

__all__ = [
    "Attention",
    "DecoderLayer",
    "Dropout",
    "EncoderLayer",
    "Grid",
    "Layout",
    "NoiseRows",
    "PairBatches",
    "Regenerator",
    "RegeneratorConfig",
    "RegeneratorInputError",
    "check_pairs",
    "dropout",
    "dropout_mask",
    "key_bias",
    "load_regenerator",
    "resolve_device",
    "save_regenerator",
    "train_regenerator",
    "use_native_dropout",
    "wrap_tokens",
]
