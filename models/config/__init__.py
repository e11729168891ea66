"""Every configuration of the pipeline, as typed pydantic models (no torch here).

One home for the knobs of regeneration (mining, pairs, pre-training, the
regenerator, decoding, profile, ablation), of target-model training, of the
DR4SR+ personalizer and of comparisons. The pipeline, the CLI (``--set
key=value``), the API (request bodies embed these models, so ``/openapi.json``
documents every field with its type, default, range and description) and the
workers all validate with these classes, and an invalid value reads the same
everywhere (:func:`describe_error`).

Importing this module must not import torch: the API process validates job
submissions with it and never loads a model.

Nested knobs are nested models. Where a nested group's defaults depend on a
profile (the regenerator's and the personalizer's ``parity`` / ``fixed``), the
nested model holds *overrides*: every field defaults to ``null``, meaning "the
profile's value".

Where each hyper-parameter lives (one concern per module, all re-exported here):

* :mod:`~models.config.regeneration`: :class:`RegenerationConfig`, the
  regeneration stage (alpha, beta, pairs, pre-training, profile, ablation);
* :mod:`~models.config.regenerator`: :class:`RegeneratorConfig` (the
  regenerator's architecture, optimiser, decoding and quirk flags) and
  :data:`RegeneratorOverrides`;
* :mod:`~models.config.training`: :class:`TrainConfig` (the target models'
  trainer) and :class:`ModelOverrides` (each target model's hyper-parameters);
* :mod:`~models.config.personalizer`: :class:`PersonalizerConfig` (DR4SR+) and
  :class:`PersonalizerOptions`;
* :mod:`~models.config.jobs`: :class:`TrainJobConfig`, :data:`TrainParameters`,
  :func:`train_job_config` and :class:`CompareConfig`;
* :mod:`~models.config.base`: the strict types, the choice literals and the
  base classes;
* :mod:`~models.config.errors`: :func:`describe_error` and its helpers.
"""

from __future__ import annotations

from models.config.base import (
    ABLATIONS,
    DEVICES,
    EXPORT_FORMATS,
    LOSSES,
    MODEL_NAMES,
    PROFILES,
    ROW_SOURCES,
    VARIANTS,
)
from models.config.base import Bool as Bool
from models.config.base import Device as Device
from models.config.base import ExportFormat as ExportFormat
from models.config.base import Float as Float
from models.config.base import Int as Int
from models.config.base import Loss as Loss
from models.config.base import ModelName as ModelName
from models.config.base import Profile as Profile
from models.config.base import RowSourceName as RowSourceName
from models.config.base import Variant as Variant
from models.config.errors import describe_error, error_message, error_path
from models.config.jobs import CompareConfig, TrainJobConfig, TrainParameters, train_job_config
from models.config.personalizer import PersonalizerConfig, PersonalizerOptions
from models.config.regeneration import RegenerationConfig
from models.config.regenerator import RegeneratorConfig, RegeneratorOverrides
from models.config.training import MODEL_FIELDS as MODEL_FIELDS
from models.config.training import ModelOverrides, TrainConfig

__all__ = [
    "ABLATIONS",
    "DEVICES",
    "EXPORT_FORMATS",
    "LOSSES",
    "MODEL_NAMES",
    "PROFILES",
    "ROW_SOURCES",
    "VARIANTS",
    "CompareConfig",
    "ModelOverrides",
    "PersonalizerConfig",
    "PersonalizerOptions",
    "RegenerationConfig",
    "RegeneratorConfig",
    "RegeneratorOverrides",
    "TrainConfig",
    "TrainJobConfig",
    "TrainParameters",
    "describe_error",
    "error_message",
    "error_path",
    "train_job_config",
]
