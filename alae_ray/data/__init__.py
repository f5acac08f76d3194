"""Datasets: preparation into Parquet shards, and reading them for training.

Importing this package does not import Ray; ``level_dataset`` / ``level_datasets`` /
``dataset_key`` load ``alae_ray.data.ray_reader`` (and Ray) on first use.
"""

from .layout import Manifest, Shard
from .prepare import PrepareOptions, prepare
from .reader import iter_level_batches, open_dataset, read_first_rows, read_level_numpy, to_tensor_batch, verify
from .sources import open_source
from .storage import DatasetError

_RAY = ("level_dataset", "level_datasets", "dataset_key")

__all__ = ["DatasetError", "Manifest", "PrepareOptions", "Shard", "iter_level_batches", "open_dataset",
           "open_source", "prepare", "read_first_rows", "read_level_numpy", "to_tensor_batch", "verify", *_RAY]


def __getattr__(name: str):
    if name in _RAY:
        from . import ray_reader

        return getattr(ray_reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
