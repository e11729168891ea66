"""Data layer: readers, preprocessing, splits, export and synthetic data."""

from models.data.errors import (
    ColumnError,
    DataError,
    EmptyDataError,
    EncodingError,
    FormatError,
    KCoreError,
    TimestampError,
    TooFewUsersError,
)
from models.data.export import EXPORT_FORMATS, read_sequences, write_sequences
from models.data.preprocess import PreparedDataset, prepare
from models.data.readers import FORMATS, frame_to_interactions, read_interactions
from models.data.sequences import EvalRows, RowSource, Sequences, Split, TrainRows
from models.data.split import leave_one_out
from models.data.synthetic import SyntheticData
from models.data.synthetic import generate as generate_synthetic
from models.data.synthetic import write as write_synthetic

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "ColumnError",
    "DataError",
    "EmptyDataError",
    "EncodingError",
    "EvalRows",
    "FormatError",
    "KCoreError",
    "PreparedDataset",
    "RowSource",
    "Sequences",
    "Split",
    "SyntheticData",
    "TimestampError",
    "TooFewUsersError",
    "TrainRows",
    "frame_to_interactions",
    "generate_synthetic",
    "leave_one_out",
    "prepare",
    "read_interactions",
    "read_sequences",
    "write_sequences",
    "write_synthetic",
]
